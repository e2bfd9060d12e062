//! Where one response goes, and in what shape: its body to a [`Sink`]
//! (decoded with `--compressed`), its head before the body with `-i` and to a
//! sink of its own with `-D`. All of it is opened before the request is sent
//! and committed together once the body is verified and decoded.

use std::path::Path;

use crate::send::decode::{decoder_for, Decoder};
use crate::send::head::head_block;
use crate::send::output::{OutputError, Sink};
use crate::send::types::{ResponseOptions, SendError};

/// The open destinations of one response.
pub(crate) struct Destination {
    body: Sink,
    /// `-D`: where the head goes besides.
    head: Option<Sink>,
    /// `-i`: the head goes before the body, into the same sink.
    include: bool,
    /// `--compressed`: decode what the `Content-Encoding` says.
    compressed: bool,
    /// The body's decoder, set by [`Destination::start`] when there is one.
    decoder: Option<Decoder>,
    /// Decoded output, reused from piece to piece.
    buf: Vec<u8>,
    /// Bytes written after decoding.
    decoded: u64,
}

impl Destination {
    /// Opens the body's destination (`output`, as `-o` gives it) and the
    /// `-D` one; either refusal is reported before anything is sent.
    pub(crate) fn open(
        output: Option<&Path>,
        options: &ResponseOptions,
    ) -> Result<Self, OutputError> {
        let body = Sink::open(output)?;
        let head = match &options.dump_header {
            Some(path) => Some(Sink::open_for("-D", Some(path))?),
            None => None,
        };
        Ok(Self {
            body,
            head,
            include: options.include,
            compressed: options.compressed,
            decoder: None,
            buf: Vec::new(),
            decoded: 0,
        })
    }

    /// `true` when the body goes to a file rather than standard output.
    pub(crate) fn is_file(&self) -> bool {
        self.body.is_file()
    }

    /// The response's head arrived: written where `-i` and `-D` ask, and
    /// the decoder chosen from its `Content-Encoding`. Returns the coding
    /// being decoded, if any.
    pub(crate) async fn start(
        &mut self,
        status: u16,
        headers: &[(String, String)],
    ) -> Result<Option<&str>, SendError> {
        if self.include || self.head.is_some() {
            let block = head_block(status, headers);
            if let Some(head) = &mut self.head {
                head.write(&block).await?;
            }
            if self.include {
                self.body.write(&block).await?;
            }
        }
        self.decoder = match self.compressed {
            true => decoder_for(headers)?,
            false => None,
        };
        Ok(self.decoder.as_ref().map(Decoder::coding))
    }

    /// Writes verified body bytes, decoded when a coding was chosen.
    pub(crate) async fn body(&mut self, mut data: &[u8]) -> Result<(), SendError> {
        let Some(decoder) = &mut self.decoder else {
            self.decoded += data.len() as u64;
            return Ok(self.body.write(data).await?);
        };
        loop {
            let more = decoder.step(&mut data, &mut self.buf)?;
            if !self.buf.is_empty() {
                self.decoded += self.buf.len() as u64;
                self.body.write(&self.buf).await?;
            }
            if data.is_empty() && !more {
                return Ok(());
            }
        }
    }

    /// Whether [`Destination::restart`] would succeed: nothing went to
    /// standard output yet, or every destination is a file.
    pub(crate) fn can_restart(&self) -> bool {
        self.body.can_restart() && self.head.as_ref().is_none_or(Sink::can_restart)
    }

    /// Empties every destination to take a response from the start again;
    /// `false`, with nothing changed, when one cannot be (part of it already
    /// went to standard output).
    pub(crate) async fn restart(&mut self) -> Result<bool, OutputError> {
        if !self.can_restart() {
            return Ok(false);
        }
        self.body.restart().await?;
        if let Some(head) = &mut self.head {
            head.restart().await?;
        }
        self.decoder = None;
        self.decoded = 0;
        Ok(true)
    }

    /// Ends decoding (a stream cut short is an error), then commits every
    /// destination; returns the bytes written after decoding.
    pub(crate) async fn commit(mut self) -> Result<u64, SendError> {
        if let Some(decoder) = &mut self.decoder {
            decoder.finish(&mut self.buf)?;
            if !self.buf.is_empty() {
                self.decoded += self.buf.len() as u64;
                self.body.write(&self.buf).await?;
            }
        }
        if let Some(head) = self.head {
            head.commit().await?;
        }
        self.body.commit().await?;
        Ok(self.decoded)
    }
}
