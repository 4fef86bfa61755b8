//! Telling systemd that enforcement has begun (`Type=notify`), so that units ordered after
//! blocker.service, such as user sessions, start only once banned programs are refused; and
//! that the daemon still runs, for its watchdog.

use std::{
    ffi::OsStr,
    io,
    os::{
        linux::net::SocketAddrExt,
        unix::{
            ffi::OsStrExt,
            net::{SocketAddr, UnixDatagram},
        },
    },
};

/// Sends `READY=1` to the socket systemd named in `NOTIFY_SOCKET`; without one (not started
/// by systemd, or not as `Type=notify`), does nothing.
pub fn notify_ready() {
    if let Some(socket) = std::env::var_os("NOTIFY_SOCKET") {
        if let Err(error) = send(&socket, "READY=1") {
            log::warn!(
                "could not tell systemd that enforcement began ({}: {error})",
                socket.to_string_lossy()
            );
        }
    }
}

/// Sends `WATCHDOG=1` where systemd asked for it (`WatchdogSec=` sets `WATCHDOG_USEC`, and
/// `WATCHDOG_PID` names this process); a daemon that stops sending is killed and restarted.
pub fn notify_watchdog() {
    let asked = std::env::var_os("WATCHDOG_USEC").is_some()
        && std::env::var("WATCHDOG_PID").map_or(true, |pid| pid == std::process::id().to_string());
    if let (true, Some(socket)) = (asked, std::env::var_os("NOTIFY_SOCKET")) {
        if let Err(error) = send(&socket, "WATCHDOG=1") {
            log::warn!(
                "could not tell systemd's watchdog the daemon runs ({}: {error})",
                socket.to_string_lossy()
            );
        }
    }
}

/// A leading `@` names a socket in the abstract namespace.
fn send(socket: &OsStr, message: &str) -> io::Result<()> {
    let address = match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(socket)?,
    };
    UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), &address)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(listener: &UnixDatagram) -> String {
        let mut buffer = [0; 64];
        let length = listener.recv(&mut buffer).unwrap();
        String::from_utf8_lossy(&buffer[..length]).into_owned()
    }

    #[test]
    fn notifies_a_socket_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1").unwrap();
        assert_eq!(received(&listener), "READY=1");
    }

    #[test]
    fn notifies_an_abstract_socket() {
        let name = format!("blocker-test-notify-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        send(OsStr::new(&format!("@{name}")), "READY=1").unwrap();
        assert_eq!(received(&listener), "READY=1");
    }
}
