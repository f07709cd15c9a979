//! The systemd notification protocol (`sd_notify`), for the unit's `Type=notify` and
//! `WatchdogSec=`: a datagram per state change to the socket named by `NOTIFY_SOCKET`. Not
//! under systemd (no variable), every call does nothing.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` names (a path, or `@name` in the abstract namespace).
    pub fn from_env() -> std::io::Result<Option<Self>> {
        let Some(name) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let name = name.to_string_lossy().into_owned();
        let address = match name.strip_prefix('@') {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(abstract_name.as_bytes())?
            }
            None => SocketAddr::from_pathname(&name)?,
        };
        // Non-blocking: a receiver that does not read (systemd busy) must not stall the
        // runtime thread that sends; a notification it cannot take is dropped (the
        // watchdog's next one follows within seconds).
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Some(Self { socket, address }))
    }

    /// Sends `state` (`READY=1`, `WATCHDOG=1`, `STOPPING=1`, …).
    pub fn notify(&self, state: &str) -> std::io::Result<()> {
        self.socket
            .send_to_addr(state.as_bytes(), &self.address)
            .map(drop)
    }
}

/// How often systemd wants `WATCHDOG=1`: `WATCHDOG_USEC`, when it is meant for this
/// process (`WATCHDOG_PID`, if set, is ours).
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim() != std::process::id().to_string() {
            return None;
        }
    }
    let micros: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (micros > 0).then(|| Duration::from_micros(micros))
}
