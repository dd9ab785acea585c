//! A client of the daemon's control socket: one request, one reply, over one connection that
//! may carry several.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::protocol::{Answer, ControlError, Reply, Request};

/// How long the client waits for one reply. A reload that binds many sockets is the slowest
/// request; it takes milliseconds.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The control socket could not be reached.
    #[error(
        "cannot connect to the control socket {path} (is sockbypassd running with --control?)"
    )]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing the request or reading the reply failed.
    #[error("control socket I/O failed")]
    Io(#[source] std::io::Error),
    /// The daemon closed the connection without a reply.
    #[error("the daemon closed the control connection without a reply")]
    Closed,
    /// The reply was not a [`Reply`].
    #[error("the daemon's reply is not valid")]
    BadReply(#[source] serde_json::Error),
    /// The daemon refused the request.
    #[error(transparent)]
    Refused(ControlError),
}

/// One connection to the control socket.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the control socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(ClientError::Io)?;
        let writer = stream.try_clone().map_err(ClientError::Io)?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends `request` and returns the daemon's answer, or its refusal as
    /// [`ClientError::Refused`].
    pub fn call(&mut self, request: &Request) -> Result<Answer, ClientError> {
        let mut line = serde_json::to_string(request).map_err(ClientError::BadReply)?;
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(ClientError::Io)?;
        match self.read_reply()? {
            Reply::Ok(answer) => Ok(answer),
            Reply::Error(e) => Err(ClientError::Refused(e)),
        }
    }

    /// Reads one reply line.
    pub fn read_reply(&mut self) -> Result<Reply, ClientError> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).map_err(ClientError::Io)?;
        if n == 0 {
            return Err(ClientError::Closed);
        }
        serde_json::from_str(&line).map_err(ClientError::BadReply)
    }
}
