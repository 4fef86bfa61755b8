//! `blocker notify`: the per-user agent. It reads the daemon's notices for its user from the
//! notification socket and shows each as a freedesktop notification on the session bus, the
//! repeats of one refusal replacing the notification before. "More information" opens the
//! rule's URL with `xdg-open`.
//!
//! Without a notification server (or a session bus) nothing breaks: the agent says so once in
//! its log and carries on reading, and shows notices again when a server appears.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
    net::UnixStream,
};
use zbus::{export::futures_core::Stream, zvariant::Value, Connection, MessageStream};

use super::{Notice, MAX_NOTICE_BYTES};
use crate::escape::{controls_escaped, escaped};

const NOTIFICATIONS: &str = "org.freedesktop.Notifications";
const NOTIFICATIONS_PATH: &str = "/org/freedesktop/Notifications";
const MORE_INFORMATION: &str = "more-information";
/// Between attempts to reach a daemon that is not (or no longer) there.
const RECONNECT: Duration = Duration::from_secs(2);
/// Notifications remembered for replacing and for their URL; older ones are forgotten.
const REMEMBERED: usize = 256;
/// freedesktop urgency levels.
const URGENCY_NORMAL: u8 = 1;
const URGENCY_CRITICAL: u8 = 2;

/// Runs until killed.
pub fn run(socket: &Path) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the agent's runtime")?
        .block_on(agent(socket.to_owned()))
}

async fn agent(socket: PathBuf) -> Result<()> {
    let mut desktop = Desktop::default();
    let mut unreachable_told = false;
    loop {
        match connect(&socket).await {
            Ok(stream) => {
                log::info!("receiving refusals from {}", escaped(&socket));
                unreachable_told = false;
                if let Err(error) = receive(stream, &mut desktop).await {
                    log::warn!("{}: {error:#}", escaped(&socket));
                }
            }
            Err(error) if !unreachable_told => {
                log::warn!(
                    "no blocker daemon at {} ({error:#}); trying again every {RECONNECT:?}",
                    escaped(&socket)
                );
                unreachable_told = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

/// Connects to the daemon's socket, which only root's daemon may hold.
async fn connect(socket: &Path) -> Result<UnixStream> {
    let stream = UnixStream::connect(socket).await?;
    let daemon = rustix::net::sockopt::socket_peercred(&stream)?;
    if !daemon.uid.is_root() {
        bail!(
            "the socket is held by uid {}, not root: not a blocker daemon",
            daemon.uid.as_raw()
        );
    }
    Ok(stream)
}

async fn receive(stream: UnixStream, desktop: &mut Desktop) -> Result<()> {
    let mut lines = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut lines)
            .take(MAX_NOTICE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if read == 0 {
            bail!("the daemon closed the connection");
        }
        if line.last() != Some(&b'\n') {
            bail!("a notice longer than {MAX_NOTICE_BYTES} bytes");
        }
        let notice: Notice = serde_json::from_slice(&line).context("an unreadable notice")?;
        desktop.show(&notice).await;
    }
}

/// The session bus's notification server, as far as it is reachable.
#[derive(Default)]
struct Desktop {
    connection: Option<Connection>,
    /// Notification ids by notice key, to replace the one shown for a refusal's repeats.
    shown: HashMap<String, u32>,
    /// URLs by notification id, for "More information".
    urls: Arc<Mutex<HashMap<u32, String>>>,
    unavailable_told: bool,
}

impl Desktop {
    async fn show(&mut self, notice: &Notice) {
        if let Err(error) = self.try_show(notice).await {
            if !self.unavailable_told {
                log::warn!("refusals cannot be shown on this desktop: {error:#}");
                self.unavailable_told = true;
            }
            self.connection = None;
            return;
        }
        if self.unavailable_told {
            log::info!("refusals are shown on this desktop again");
            self.unavailable_told = false;
        }
    }

    async fn try_show(&mut self, notice: &Notice) -> Result<()> {
        let connection = match &self.connection {
            Some(connection) => connection.clone(),
            None => {
                let connection = Connection::session()
                    .await
                    .context("connecting to the session bus")?;
                watch_actions(&connection, self.urls.clone()).await?;
                self.connection = Some(connection.clone());
                connection
            }
        };
        let actions: Vec<&str> = match &notice.url {
            Some(_) => vec![
                "default",
                "More information",
                MORE_INFORMATION,
                "More information",
            ],
            None => Vec::new(),
        };
        let urgency = if notice.action == "audit" {
            URGENCY_NORMAL
        } else {
            URGENCY_CRITICAL
        };
        let hints = HashMap::from([("urgency", Value::U8(urgency))]);
        let replaces = self.shown.get(&notice.key).copied().unwrap_or(0);
        let reply = connection
            .call_method(
                Some(NOTIFICATIONS),
                NOTIFICATIONS_PATH,
                Some(NOTIFICATIONS),
                "Notify",
                &(
                    "blocker",
                    replaces,
                    "dialog-error",
                    controls_escaped(&notice.summary()),
                    markup_escaped(&controls_escaped(&notice.body())),
                    actions,
                    hints,
                    -1_i32,
                ),
            )
            .await
            .context("asking the notification server")?;
        let id: u32 = reply.body().deserialize().context("the server's answer")?;
        if self.shown.len() >= REMEMBERED {
            self.shown.clear();
        }
        self.shown.insert(notice.key.clone(), id);
        if let Some(url) = &notice.url {
            let mut urls = self.urls.lock().unwrap_or_else(|p| p.into_inner());
            if urls.len() >= REMEMBERED {
                urls.clear();
            }
            urls.insert(id, url.clone());
        }
        Ok(())
    }
}

/// Opens a notification's URL when its action is invoked.
async fn watch_actions(
    connection: &Connection,
    urls: Arc<Mutex<HashMap<u32, String>>>,
) -> Result<()> {
    connection
        .call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "AddMatch",
            &("type='signal',interface='org.freedesktop.Notifications',member='ActionInvoked'"),
        )
        .await
        .context("asking the session bus for the notifications' actions")?;
    let mut messages = MessageStream::from(connection);
    tokio::spawn(async move {
        while let Some(Ok(message)) =
            std::future::poll_fn(|context| Pin::new(&mut messages).poll_next(context)).await
        {
            let header = message.header();
            if header.member().map(|member| member.as_str()) != Some("ActionInvoked") {
                continue;
            }
            let Ok((id, _action)) = message.body().deserialize::<(u32, String)>() else {
                continue;
            };
            let url = urls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
                .cloned();
            if let Some(url) = url {
                open(url);
            }
        }
    });
    Ok(())
}

/// `xdg-open URL`, waited for on a thread of its own so that it leaves no zombie.
fn open(url: String) {
    std::thread::spawn(move || {
        if let Err(error) = std::process::Command::new("xdg-open").arg(&url).status() {
            log::warn!("opening {}: xdg-open: {error}", escaped(&url));
        }
    });
}

/// Notification servers may read the body as markup: `&`, `<` and `>` stay text.
fn markup_escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_never_markup() {
        assert_eq!(
            markup_escaped("<b>a & b</b>"),
            "&lt;b&gt;a &amp; b&lt;/b&gt;"
        );
    }
}
