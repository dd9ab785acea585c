//! The event queue (SPEC.md §8.4): the device's only event is `TRANSPORT_RESET`, owed when a
//! frontend hands over rings that a still-running guest driver had used before (a reconnect),
//! because every connection the driver knew is gone.

use std::sync::atomic::Ordering;

use sockbypass_wire::consts::EVENT_LEN;
use sockbypass_wire::event::VsockEvent;
use sockbypass_wire::parse_event_chain;
use vm_memory::ByteValued;

use super::attachment::EVT;
use super::hub::Switch;
use crate::warn_limited;

/// Event buffers one call of [`Switch::fill_events`] may take, usable or not.
const EVENT_POP_BUDGET: usize = 64;

impl Switch {
    /// Writes the event VM `index` is owed, if any, into its event queue. Returns whether an
    /// event was delivered.
    pub fn fill_events(&self, index: usize) -> bool {
        let Some(vm) = self.vm(index) else {
            return false;
        };
        let mut rx = vm.rx();
        if !rx.reset_event_owed {
            return false;
        }
        let Some(att) = vm.attachment() else {
            return false;
        };
        let mem = att.memory();
        // A guest that keeps posting unusable event buffers never keeps the thread: after
        // this many, the rest is handed back (SPEC.md §9.2).
        let mut rearmed = false;
        for _ in 0..EVENT_POP_BUDGET {
            let Some(chain) = att.pop(EVT, &mem) else {
                // Ask for a kick when the driver posts an event buffer; if one came meanwhile,
                // look once more.
                match att.enable_kicks(EVT) {
                    Ok(true) if !rearmed => {
                        rearmed = true;
                        continue;
                    }
                    Ok(true) => break,
                    _ => return false,
                }
            };
            let head = chain.head_index();
            let used = match parse_event_chain(chain) {
                Ok(buf) => {
                    let event = VsockEvent::transport_reset();
                    match buf.space.write_bytes(&*mem, 0, event.as_slice()) {
                        Ok(()) => EVENT_LEN,
                        Err(e) => {
                            warn_limited!(vm.warn, vm = %vm.config.name, error = %e, "cannot write event");
                            0
                        }
                    }
                }
                Err(e) => {
                    vm.counters.rx_bad_chain.fetch_add(1, Ordering::Relaxed);
                    warn_limited!(vm.warn, vm = %vm.config.name, reason = e.reason(), error = %e, "unusable event buffer");
                    0
                }
            };
            if !vm.return_chain(&att, &mem, EVT, head, used) {
                return false;
            }
            if used > 0 {
                rx.reset_event_owed = false;
                vm.counters.events_sent.fetch_add(1, Ordering::Relaxed);
                drop(rx);
                let _ = att.notify(EVT);
                tracing::info!(vm = %vm.config.name, "sent TRANSPORT_RESET: the guest driver outlived its previous attachment");
                return true;
            }
        }
        drop(rx);
        vm.request_resume();
        false
    }
}
