//! The daemon's side of the control socket. Clients are served by tasks of their own, each
//! bounded in size and time, so that the event loop never waits on one: it only hears, on a
//! channel, of what it must do itself (stop) or record (a policy change).

use std::{
    fmt, fs, io,
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, Mutex, Semaphore},
    task::JoinHandle,
    time::timeout,
};

use super::protocol::{self, Reply, Request, MAX_REQUEST_BYTES};
use crate::{control::PolicyChange, escape::escaped};

/// How much of the daemon clients may take.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Connections served at once; any beyond are closed unanswered.
    connections: usize,
    /// How long a client may take to send its request, and to take its reply: one that
    /// connects and says nothing holds its place no longer.
    client_timeout: Duration,
}

const LIMITS: Limits = Limits {
    connections: 4,
    client_timeout: Duration::from_secs(5),
};
/// Connections the kernel queues before the daemon accepts them.
const BACKLOG: i32 = 16;
/// The only mode the socket ever has: root's (connecting takes write permission).
const SOCKET_MODE: u32 = 0o600;

/// Where the daemon whose status document is `status_file` listens: beside the document, with
/// the extension `sock` (`/run/blocker/status.sock` by default).
pub fn path_for(status_file: &Path) -> Result<PathBuf> {
    let path = status_file.with_extension("sock");
    if path == status_file {
        bail!(
            "the status file {} ends in .sock, the control socket's name beside it",
            escaped(status_file)
        );
    }
    Ok(path)
}

/// Who is at the other end of a connection, as the kernel says (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub pid: Option<i32>,
    pub uid: u32,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "pid {pid} (uid {})", self.uid),
            None => write!(f, "a process of uid {}", self.uid),
        }
    }
}

/// What the event loop must do for a client.
#[derive(Debug)]
pub enum Notice {
    /// A client asked the daemon to stop, and was told it stops.
    Stop { peer: Peer },
    /// The policy directory was changed as a client asked.
    PolicyChanged { peer: Peer, change: PolicyChange },
}

/// The daemon's listening socket. It is removed when dropped, unless another daemon has since
/// taken its name.
pub struct ControlSocket {
    path: PathBuf,
    /// The socket file's device and inode.
    file: (u64, u64),
    listener: Option<std::os::unix::net::UnixListener>,
    accepting: Option<JoinHandle<()>>,
}

impl ControlSocket {
    /// Creates the socket at `path` with mode 0600, replacing a socket left there (by a daemon
    /// that was killed, or one this one replaces).
    pub fn bind(path: PathBuf) -> Result<Self> {
        use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
        if let Some(directory) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            fs::create_dir_all(directory)
                .with_context(|| format!("creating {}", escaped(directory)))?;
        }
        match fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.file_type().is_socket() => fs::remove_file(&path)
                .with_context(|| format!("removing the old socket {}", escaped(&path)))?,
            Ok(_) => bail!(
                "{} is in the way of the control socket: it is not a socket",
                escaped(&path)
            ),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error).with_context(|| format!("examining {}", escaped(&path)))
            }
        }
        let address = SocketAddrUnix::new(&path).with_context(|| {
            format!(
                "{} is too long for a socket's path: choose a shorter --status-file",
                escaped(&path)
            )
        })?;
        let creating_text = format!("creating the control socket {}", escaped(&path));
        let creating = || creating_text.clone();
        let socket = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .with_context(creating)?;
        // bind() gives the file the mode of the socket's own inode: it is root's from the start,
        // never open to others for a moment.
        rustix::fs::fchmod(&socket, rustix::fs::Mode::from_raw_mode(SOCKET_MODE))
            .with_context(creating)?;
        rustix::net::bind(&socket, &address).with_context(creating)?;
        let file = match fs::symlink_metadata(&path) {
            Ok(metadata) => (metadata.dev(), metadata.ino()),
            Err(error) => {
                let _ = fs::remove_file(&path);
                return Err(error).with_context(creating);
            }
        };
        // From here on, a failure removes the socket with `bound`.
        let mut bound = Self {
            path,
            file,
            listener: None,
            accepting: None,
        };
        rustix::net::listen(&socket, BACKLOG).with_context(creating)?;
        bound.listener = Some(socket.into());
        Ok(bound)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts serving clients on the running event loop: requests change `policy_dir`, and
    /// what the loop must do itself arrives on the returned channel.
    pub fn serve(&mut self, policy_dir: PathBuf) -> Result<mpsc::Receiver<Notice>> {
        self.serve_within(policy_dir, LIMITS)
    }

    fn serve_within(
        &mut self,
        policy_dir: PathBuf,
        limits: Limits,
    ) -> Result<mpsc::Receiver<Notice>> {
        let listener = self
            .listener
            .take()
            .context("the control socket is served once")?;
        let listener = UnixListener::from_std(listener).context("serving the control socket")?;
        let (notices, received) = mpsc::channel(limits.connections);
        let shared = Arc::new(Shared {
            limits,
            policy_dir,
            changing: Mutex::new(()),
            notices,
        });
        self.accepting = Some(tokio::spawn(accept(listener, shared)));
        Ok(received)
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if let Some(accepting) = self.accepting.take() {
            accepting.abort();
        }
        let ours = fs::symlink_metadata(&self.path)
            .is_ok_and(|metadata| (metadata.dev(), metadata.ino()) == self.file);
        if ours {
            if let Err(error) = fs::remove_file(&self.path) {
                log::warn!("removing {}: {error}", escaped(&self.path));
            }
        }
    }
}

/// What every connection's task shares.
struct Shared {
    limits: Limits,
    policy_dir: PathBuf,
    /// Held while a change is checked and written: each is checked against the last.
    changing: Mutex<()>,
    notices: mpsc::Sender<Notice>,
}

async fn accept(listener: UnixListener, shared: Arc<Shared>) {
    let places = Arc::new(Semaphore::new(shared.limits.connections));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                log::warn!("control socket: accepting a connection: {error}");
                // Out of descriptors, say: give whatever holds them a moment.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            log::warn!(
                "control socket: closed a connection unanswered: {} are being served",
                shared.limits.connections
            );
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            serve_connection(stream, &shared).await;
            drop(place);
        });
    }
}

/// Only root may stop the daemon or change its policy; the socket's mode already keeps others
/// out, this holds whatever the mode.
fn admit(peer: Peer) -> Result<(), String> {
    if peer.uid == 0 {
        Ok(())
    } else {
        Err("only root may control the blocker daemon".to_owned())
    }
}

async fn serve_connection(mut stream: UnixStream, shared: &Shared) {
    let client_timeout = shared.limits.client_timeout;
    let peer = match stream.peer_cred() {
        Ok(credentials) => Peer {
            pid: credentials.pid(),
            uid: credentials.uid(),
        },
        Err(error) => {
            log::warn!("control socket: closed a connection whose peer is unknown: {error}");
            return;
        }
    };
    if let Err(error) = admit(peer) {
        log::warn!("control socket: refused {peer}: {error}");
        answer(&mut stream, peer, client_timeout, Reply::Refused { error }).await;
        return;
    }
    let request = match timeout(client_timeout, read_request(&mut stream)).await {
        Ok(Ok(request)) => request,
        Ok(Err(error)) => {
            log::warn!("control socket: refused {peer}: {error}");
            answer(&mut stream, peer, client_timeout, Reply::Refused { error }).await;
            return;
        }
        Err(_) => {
            log::warn!(
                "control socket: {peer} sent no request within {client_timeout:?}; closed the \
                 connection"
            );
            return;
        }
    };
    log::info!("control socket: {} asked by {peer}", request.summary());
    let change = match request {
        Request::Stop {} => {
            let said = format!("the blocker daemon (pid {}) stops", std::process::id());
            answer(
                &mut stream,
                peer,
                client_timeout,
                Reply::Done { said: vec![said] },
            )
            .await;
            let _ = shared.notices.send(Notice::Stop { peer }).await;
            return;
        }
        Request::Install { files } => PolicyChange::Install(files),
        Request::Remove { names } => PolicyChange::Remove(names),
    };
    let changed = {
        let _turn = shared.changing.lock().await;
        let (policy_dir, change) = (shared.policy_dir.clone(), change.clone());
        tokio::task::spawn_blocking(move || change.apply(&policy_dir))
            .await
            .map_err(|error| format!("changing the policy: {error}"))
            .and_then(|applied| applied.map_err(|error| format!("{error:#}")))
    };
    match changed {
        Ok(said) => {
            answer(&mut stream, peer, client_timeout, Reply::Done { said }).await;
            let _ = shared
                .notices
                .send(Notice::PolicyChanged { peer, change })
                .await;
        }
        Err(error) => {
            log::warn!("control socket: refused {peer}: {error}");
            answer(&mut stream, peer, client_timeout, Reply::Refused { error }).await;
        }
    }
}

/// One request line of at most [`MAX_REQUEST_BYTES`].
async fn read_request(stream: &mut UnixStream) -> Result<Request, String> {
    let mut line = Vec::new();
    BufReader::new(stream.take(MAX_REQUEST_BYTES as u64 + 1))
        .read_until(b'\n', &mut line)
        .await
        .map_err(|error| format!("reading the request: {error}"))?;
    if line.len() > MAX_REQUEST_BYTES {
        return Err(format!(
            "the request is larger than {MAX_REQUEST_BYTES} bytes; install fewer files at once"
        ));
    }
    if !line.ends_with(b"\n") {
        return Err("the request ended before its end of line".to_owned());
    }
    protocol::decode(&line)
}

async fn answer(stream: &mut UnixStream, peer: Peer, within: Duration, reply: Reply) {
    match timeout(within, stream.write_all(&protocol::encode(&reply))).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => log::warn!("control socket: answering {peer}: {error}"),
        Err(_) => log::warn!("control socket: {peer} took no answer within {within:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_lies_beside_the_status_document() {
        assert_eq!(
            path_for(Path::new("/run/blocker/status.json")).unwrap(),
            Path::new("/run/blocker/status.sock")
        );
        assert_eq!(
            path_for(Path::new("/tmp/x/status")).unwrap(),
            Path::new("/tmp/x/status.sock")
        );
        assert!(path_for(Path::new("/tmp/x/status.sock")).is_err());
    }

    #[test]
    fn only_root_is_admitted() {
        assert!(admit(Peer {
            pid: Some(1),
            uid: 0
        })
        .is_ok());
        let refusal = admit(Peer {
            pid: Some(1),
            uid: 65534,
        })
        .unwrap_err();
        assert!(refusal.contains("only root"), "{refusal}");
    }

    #[test]
    fn the_socket_is_root_only_replaces_a_stale_one_and_is_removed_with_the_daemon() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/status.sock");
        let first = ControlSocket::bind(path.clone()).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, SOCKET_MODE);
        // A daemon killed without removing its socket leaves it; the next one replaces it.
        std::mem::forget(first);
        let second = ControlSocket::bind(path.clone()).unwrap();
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        drop(second);
        assert!(!path.exists());

        fs::write(&path, "not a socket").unwrap();
        let error = format!("{:#}", ControlSocket::bind(path.clone()).err().unwrap());
        assert!(error.contains("not a socket"), "{error}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "not a socket");
    }

    #[test]
    fn clients_beyond_the_bound_are_closed_unanswered() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.sock");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut socket = ControlSocket::bind(path.clone()).unwrap();
            let limits = Limits {
                connections: 2,
                // Longer than any test: the silent clients keep their places.
                client_timeout: Duration::from_secs(3600),
            };
            let _notices = socket.serve_within(dir.path().to_owned(), limits).unwrap();
            // Accepted in the order they connect: these two take the places.
            let _silent = [
                UnixStream::connect(&path).await.unwrap(),
                UnixStream::connect(&path).await.unwrap(),
            ];
            let mut third = UnixStream::connect(&path).await.unwrap();
            third
                .write_all(&protocol::encode(&Request::Stop {}))
                .await
                .unwrap();
            let mut reply = Vec::new();
            let _ = third.read_to_end(&mut reply).await;
            assert!(reply.is_empty(), "{}", String::from_utf8_lossy(&reply));
        });
    }

    #[test]
    fn a_replaced_socket_is_left_to_the_daemon_that_replaced_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.sock");
        let older = ControlSocket::bind(path.clone()).unwrap();
        let newer = ControlSocket::bind(path.clone()).unwrap();
        drop(older);
        assert!(path.exists(), "the newer daemon's socket stays");
        drop(newer);
        assert!(!path.exists());
    }
}
