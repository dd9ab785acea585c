//! Guest memory and vring types as the vhost-user layer maps them: one name for each, shared by
//! the device, the switch and the host endpoints (none of which owns them).

use vhost_user_backend::VringRwLock;
use vm_memory::{GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};

/// Guest memory as the vhost-user layer maps it.
pub type GuestMem = GuestMemoryMmap<()>;
/// The atomic handle the vhost-user layer updates on SET_MEM_TABLE.
pub type AtomicMem = GuestMemoryAtomic<GuestMem>;
/// A loaded snapshot of guest memory.
pub type MemGuard = GuestMemoryLoadGuard<GuestMem>;
/// The vring type of the device.
pub type Vring = VringRwLock<AtomicMem>;
