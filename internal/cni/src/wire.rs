//! The socket protocol between plugin and daemon: one request per connection, one line of JSON
//! each way, and the pod's network namespace riding with the request's first bytes as an
//! `SCM_RIGHTS` descriptor.
//!
//! ```text
//! plugin -> daemon  {"v":1,"command":"ADD","containerId":"…","ifname":"eth0",
//!                    "netns":"/var/run/netns/…",
//!                    "pod":{"namespace":"…","name":"…","uid":"…","infraContainerId":"…"},
//!                    "config":{…stdin as given…},"netnsFd":true}\n    (+ the netns fd)
//! daemon -> plugin  {"output":{…result or VERSION, in the request's cniVersion…}}\n
//!                 | {"error":{"cniVersion":"…","code":11,"msg":"…","details":"…"}}\n
//!                 | {}\n                                            (success, nothing to print)
//! ```
//!
//! The plugin's side is blocking std code (it runs once and exits); the daemon's side is async.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;

use crate::env::{Command, PodIdentity};
use crate::types::ErrorObject;

/// Where the daemon listens unless the network configuration's `socket` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/skein/cni.sock";

/// Bumped on an incompatible change to [`Request`] or [`Response`]; the plugin binary and the
/// daemon come from one package but the old daemon runs on while the new binary is installed.
pub(crate) const PROTOCOL_VERSION: u32 = 1;

/// Upper bound of one message either way. `GC`'s attachment list is the largest thing sent:
/// a node's pods at ~100 bytes each fit many times over.
pub(crate) const MAX_MESSAGE: usize = 8 << 20;

/// The most descriptors the daemon accepts with a request; more than one is already an error,
/// the room for a few lets it say so instead of seeing a truncated message.
const MAX_FDS: usize = 4;

/// How long the plugin waits for the daemon's answer: under the kubelet's two-minute runtime
/// request timeout, so that a stuck daemon yields skein's message rather than a killed plugin.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(100);

/// How long the plugin may take to hand over its request.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The plugin's request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Request {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub v: u32,
    pub command: Command,
    #[serde(default)]
    pub container_id: String,
    #[serde(default)]
    pub ifname: String,
    /// `CNI_NETNS` as the runtime named it, for the daemon's log and the result's `sandbox`.
    #[serde(default)]
    pub netns: String,
    #[serde(default)]
    pub pod: PodIdentity,
    /// The network configuration exactly as it came on stdin; the daemon parses it with the
    /// same code the plugin checked it with.
    pub config: Value,
    /// Whether a namespace descriptor was sent with the request, so one lost on the way is told
    /// apart from one never sent.
    #[serde(default)]
    pub netns_fd: bool,
}

/// The daemon's answer: what the plugin prints. Neither field set means success without output
/// (`DEL`, `CHECK`, `STATUS`, `GC`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Response {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorObject>,
}

/// Why the plugin got no answer.
#[derive(Debug)]
pub(crate) enum ExchangeError {
    /// Nobody could be reached on the socket.
    Connect(io::Error),
    /// Connected, but sending or receiving failed (including the daemon hanging up unanswered).
    Transfer(io::Error),
    /// The daemon answered something the plugin cannot read.
    Garbled(String),
}

/// Sends `request` (with `netns` as a descriptor) to the daemon on `socket` and waits for the
/// answer. Blocking.
pub(crate) fn exchange(
    socket: &Path,
    request: &Request,
    netns: Option<BorrowedFd<'_>>,
) -> Result<Response, ExchangeError> {
    let mut stream = StdUnixStream::connect(socket).map_err(ExchangeError::Connect)?;
    let mut line = serde_json::to_vec(request).expect("a request serializes");
    line.push(b'\n');
    send(&mut stream, &line, netns).map_err(ExchangeError::Transfer)?;
    let answer = receive(&mut stream).map_err(ExchangeError::Transfer)?;
    let answer = answer.strip_suffix(b"\n").unwrap_or(&answer);
    if answer.is_empty() {
        return Err(ExchangeError::Transfer(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the daemon hung up without answering",
        )));
    }
    serde_json::from_slice(answer).map_err(|e| ExchangeError::Garbled(e.to_string()))
}

fn send(stream: &mut StdUnixStream, line: &[u8], netns: Option<BorrowedFd<'_>>) -> io::Result<()> {
    stream.set_write_timeout(Some(SEND_TIMEOUT))?;
    let mut sent = 0;
    if let Some(fd) = netns {
        // The descriptor travels with the first bytes; the rest follows as plain writes.
        let fds = [fd];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(io::Error::other("no room for the descriptor"));
        }
        sent = loop {
            match rustix::net::sendmsg(
                &*stream,
                &[IoSlice::new(line)],
                &mut control,
                SendFlags::NOSIGNAL,
            ) {
                Ok(n) => break n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
    }
    stream.write_all(&line[sent..])?;
    stream.flush()
}

fn receive(stream: &mut StdUnixStream) -> io::Result<Vec<u8>> {
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let mut answer = Vec::new();
    // The daemon closes after its one line, so reading to the end reads exactly the answer.
    let read = stream.take(MAX_MESSAGE as u64 + 1).read_to_end(&mut answer);
    match read {
        Ok(_) if answer.len() > MAX_MESSAGE => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the answer exceeds {MAX_MESSAGE} bytes"),
        )),
        Ok(_) => Ok(answer),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {} s", ANSWER_TIMEOUT.as_secs()),
            ))
        }
        Err(e) => Err(e),
    }
}

/// Why the daemon could not read a request.
#[derive(Debug)]
pub(crate) enum ReadError {
    Io(io::Error),
    /// The connection ended before a whole line arrived.
    Incomplete,
    TooLarge,
    /// The kernel dropped descriptors for lack of room: more than [`MAX_FDS`] were sent.
    TooManyFds,
}

/// Reads one request line and the descriptors that came with it.
pub(crate) async fn read_request(
    stream: &UnixStream,
) -> Result<(Vec<u8>, Vec<OwnedFd>), ReadError> {
    let mut line = Vec::new();
    let mut fds = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let (n, flags) = stream
            .async_io(Interest::READABLE, || {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                // CLOEXEC: a descriptor must not leak into anything the daemon later executes.
                let received = rustix::net::recvmsg(
                    stream,
                    &mut [IoSliceMut::new(&mut chunk)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )?;
                for message in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(received_fds) = message {
                        fds.extend(received_fds);
                    }
                }
                Ok((received.bytes, received.flags))
            })
            .await
            .map_err(ReadError::Io)?;
        if flags.contains(ReturnFlags::CTRUNC) {
            return Err(ReadError::TooManyFds);
        }
        if n == 0 {
            return Err(ReadError::Incomplete);
        }
        let chunk = &chunk[..n];
        if let Some(end) = chunk.iter().position(|b| *b == b'\n') {
            line.extend_from_slice(&chunk[..end]);
            return Ok((line, fds));
        }
        line.extend_from_slice(chunk);
        if line.len() > MAX_MESSAGE {
            return Err(ReadError::TooLarge);
        }
    }
}

/// Writes the one answer line and closes the sending side.
pub(crate) async fn write_response(stream: &mut UnixStream, response: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(response).expect("a response serializes");
    line.push(b'\n');
    stream.write_all(&line).await?;
    stream.shutdown().await
}
