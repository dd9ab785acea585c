//! The virtqueue plumbing of [`VsockDriver`]: polling the three queues, posting and reclaiming
//! RX and event buffers, posting TX chains (and the control packets that wait for room), kicks.

use std::time::Duration;

use sockbypass_wire::consts::{EVENT_TRANSPORT_RESET, HEADER_SIZE};
use sockbypass_wire::PacketHeader;
use vm_memory::ByteValued;

use super::{RawPacket, RxBuf, RxLayout, VsockDriver, EVENT_SIZE, RX_GAP};
use crate::error::DriverError;
use crate::guest_memory::GuestRange;
use crate::split_queue::{wait_for_calls, Buffer, UsedElem};
use crate::tx::{self, is_no_room, read_buffers, TxLayout};

impl VsockDriver {
    /// Processes everything the device completed, sends what waits for room, kicks and re-arms
    /// interrupts. Never blocks. Returns the number of used entries processed.
    pub fn poll(&mut self) -> Result<usize, DriverError> {
        let mut work = 0;
        loop {
            self.rx.consume_call()?;
            self.tx.consume_call()?;
            self.event.consume_call()?;
            work += self.process_used()?;
            self.flush_backlog()?;
            self.finish()?;
            if !self.arm()? {
                break;
            }
        }
        Ok(work)
    }

    /// Like [`VsockDriver::poll`], but if nothing was pending waits up to `timeout` for the
    /// device to signal a queue first. Returns the number of used entries processed.
    pub fn pump(&mut self, timeout: Duration) -> Result<usize, DriverError> {
        let n = self.poll()?;
        if n > 0 {
            return Ok(n);
        }
        let wait = match self.cfg.poll_interval {
            Some(p) => p.min(timeout),
            None => timeout,
        };
        wait_for_calls(&mut [&mut self.rx, &mut self.tx, &mut self.event], wait)?;
        self.poll()
    }

    /// Re-arms interrupts on all queues; returns whether used entries are already pending.
    pub(super) fn arm(&mut self) -> Result<bool, DriverError> {
        let a = self.rx.enable_interrupts()?;
        let b = self.tx.enable_interrupts()?;
        let c = self.event.enable_interrupts()?;
        Ok(a || b || c)
    }

    /// Kicks every queue that got new chains.
    pub(super) fn finish(&mut self) -> Result<(), DriverError> {
        if std::mem::take(&mut self.kick_tx) {
            self.tx.kick()?;
        }
        if std::mem::take(&mut self.kick_rx) {
            self.rx.kick()?;
        }
        if std::mem::take(&mut self.kick_event) {
            self.event.kick()?;
        }
        Ok(())
    }

    fn process_used(&mut self) -> Result<usize, DriverError> {
        let mut work = self.reclaim_tx()?;
        while let Some(used) = self.rx.pop_used()? {
            work += 1;
            self.on_rx_used(used)?;
        }
        while let Some(used) = self.event.pop_used()? {
            work += 1;
            self.on_event_used(used)?;
        }
        Ok(work)
    }

    pub(super) fn reclaim_tx(&mut self) -> Result<usize, DriverError> {
        let mut n = 0;
        while let Some(used) = self.tx.pop_used()? {
            n += 1;
            let allocs = u16::try_from(used.id)
                .ok()
                .and_then(|h| self.tx_posted.remove(&h));
            for a in allocs.into_iter().flatten() {
                self.ram.free(a)?;
            }
        }
        Ok(n)
    }

    // ----- RX and events ----------------------------------------------------------------

    pub(super) fn alloc_rx_buffer(&mut self) -> Result<RxBuf, DriverError> {
        let size = self.cfg.rx_buffer_size;
        let hdr = HEADER_SIZE as u32;
        match self.cfg.rx_layout {
            RxLayout::Single => {
                let total = hdr + size;
                let a = self.ram.alloc(u64::from(total), 8)?;
                Ok(RxBuf {
                    allocs: vec![a],
                    buffers: vec![Buffer::writable(a.addr, total)],
                })
            }
            RxLayout::Split => {
                let h = self.ram.alloc(u64::from(hdr) + RX_GAP, 8)?;
                let p = match self.ram.alloc(u64::from(size.max(1)), 8) {
                    Ok(p) => p,
                    Err(e) => {
                        self.ram.free(h)?;
                        return Err(e.into());
                    }
                };
                Ok(RxBuf {
                    allocs: vec![h, p],
                    buffers: vec![
                        Buffer::writable(h.addr, hdr),
                        Buffer::writable(p.addr, size),
                    ],
                })
            }
        }
    }

    pub(super) fn post_rx(&mut self, buf: RxBuf) -> Result<(), DriverError> {
        match self.rx.add_chain(&buf.buffers) {
            Ok(head) => {
                self.rx_posted.insert(head, buf);
                self.kick_rx = true;
                Ok(())
            }
            Err(e) => {
                for a in buf.allocs {
                    self.ram.free(a)?;
                }
                Err(e.into())
            }
        }
    }

    fn on_rx_used(&mut self, used: UsedElem) -> Result<(), DriverError> {
        self.stats.rx_packets += 1;
        self.rx_seq += 1;
        let posted = u16::try_from(used.id)
            .ok()
            .and_then(|h| self.rx_posted.remove(&h));
        let Some(buf) = posted else {
            self.stats.rx_unknown_used += 1;
            return Ok(());
        };
        let capacity: u64 = buf.buffers.iter().map(|b| u64::from(b.len)).sum();
        let readable = u64::from(used.len).min(capacity);
        let readable = usize::try_from(readable).unwrap_or(usize::MAX);
        let bytes = read_buffers(&self.ram, &buf.buffers, readable)?;
        // The buffer goes straight back to the device, unless refilling is off.
        if self.rx_refill {
            self.post_rx(buf)?;
        } else {
            for a in buf.allocs {
                self.ram.free(a)?;
            }
        }

        let mut header = PacketHeader::default();
        let n = bytes.len().min(HEADER_SIZE);
        header.as_mut_slice()[..n].copy_from_slice(&bytes[..n]);
        let payload_len = header.len() as usize;
        let malformed = (used.len as usize) < HEADER_SIZE
            || u64::from(used.len) > capacity
            || payload_len > bytes.len().saturating_sub(HEADER_SIZE);
        if !malformed && used.len as usize != HEADER_SIZE + payload_len {
            self.stats.rx_used_len_mismatch += 1;
        }
        let payload: &[u8] = if malformed {
            self.stats.rx_malformed += 1;
            &[]
        } else {
            &bytes[HEADER_SIZE..HEADER_SIZE + payload_len]
        };
        if self.cfg.raw_record_limit > 0 {
            if self.raw.len() >= self.cfg.raw_record_limit {
                self.raw.pop_front();
            }
            self.raw.push_back(RawPacket {
                seq: self.rx_seq,
                header,
                used_len: used.len,
                payload: if self.cfg.record_payloads {
                    payload.to_vec()
                } else {
                    Vec::new()
                },
                malformed,
            });
        }
        if malformed {
            return Ok(());
        }
        self.dispatch(header, payload)
    }

    pub(super) fn post_event(&mut self, range: GuestRange) -> Result<(), DriverError> {
        match self
            .event
            .add_chain(&[Buffer::writable(range.addr, EVENT_SIZE)])
        {
            Ok(head) => {
                self.event_posted.insert(head, range);
                self.kick_event = true;
                Ok(())
            }
            Err(e) => {
                self.ram.free(range)?;
                Err(e.into())
            }
        }
    }

    fn on_event_used(&mut self, used: UsedElem) -> Result<(), DriverError> {
        let posted = u16::try_from(used.id)
            .ok()
            .and_then(|h| self.event_posted.remove(&h));
        let Some(range) = posted else {
            return Ok(());
        };
        let id: u32 = self.ram.read_obj::<u32>(range.addr)?;
        let id = u32::from_le(id);
        self.ram.fill(range, 0)?;
        self.post_event(range)?;
        self.stats.events += 1;
        self.events.push(id);
        if id == EVENT_TRANSPORT_RESET {
            self.stats.transport_resets += 1;
            self.backlog.clear();
            self.reset_all_streams();
        }
        Ok(())
    }

    // ----- TX ------------------------------------------------------------------------------

    /// Posts one packet, reclaiming completed TX chains first if there is no room.
    pub(super) fn post_packet(
        &mut self,
        hdr: &PacketHeader,
        payload: &[u8],
        layout: &TxLayout,
    ) -> Result<u16, DriverError> {
        let parts: [&[u8]; 2] = [hdr.as_slice(), payload];
        let posted = match tx::post(&self.ram, &mut self.tx, &parts, layout) {
            Err(e) if is_no_room(&e) => {
                if self.reclaim_tx()? == 0 {
                    if self.tx.num_in_flight() == 0 {
                        return Err(DriverError::TooBig {
                            bytes: HEADER_SIZE + payload.len(),
                            descriptors: layout.plan(HEADER_SIZE + payload.len())?.0.len(),
                        });
                    }
                    return Err(e);
                }
                tx::post(&self.ram, &mut self.tx, &parts, layout)?
            }
            other => other?,
        };
        self.tx_posted.insert(posted.head, posted.allocs);
        self.kick_tx = true;
        self.stats.tx_packets += 1;
        self.stats.tx_bytes += payload.len() as u64;
        Ok(posted.head)
    }

    /// Sends a header-only packet now, or queues it until there is TX room.
    pub(super) fn send_control(&mut self, hdr: PacketHeader) -> Result<(), DriverError> {
        if self.backlog.is_empty() {
            let layout = self.cfg.tx_layout.clone();
            match self.post_packet(&hdr, &[], &layout) {
                Ok(_) => return Ok(()),
                Err(e) if is_no_room(&e) => {}
                Err(e) => return Err(e),
            }
        }
        self.stats.control_backlogged += 1;
        self.backlog.push_back(hdr);
        Ok(())
    }

    pub(super) fn flush_backlog(&mut self) -> Result<(), DriverError> {
        let layout = self.cfg.tx_layout.clone();
        while let Some(hdr) = self.backlog.front().copied() {
            match self.post_packet(&hdr, &[], &layout) {
                Ok(_) => {
                    self.backlog.pop_front();
                }
                Err(e) if is_no_room(&e) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
