//! Reading SentencePiece `tokenizer.model` files (a protobuf `ModelProto`)
//! without a protobuf library: the pieces and the few settings that decide
//! how the model tokenizes, which is what `inspect` and the conversion to
//! `tokenizer.json` need.

use anyhow::{bail, Result};

/// One piece of a SentencePiece model.
#[derive(Debug, Clone, PartialEq)]
pub struct SpmPiece {
    /// The piece text (`▁the`, `<0x0A>`, `<s>`).
    pub piece: String,
    /// Its score (merge rank for BPE, log probability for unigram).
    pub score: f32,
    /// `ModelProto.SentencePiece.Type`: 1 normal, 2 unknown, 3 control,
    /// 4 user-defined, 5 unused, 6 byte.
    pub kind: u64,
}

/// The parts of a SentencePiece `ModelProto` that decide how it tokenizes.
#[derive(Debug, Clone, PartialEq)]
pub struct SpmModel {
    /// The pieces, in id order.
    pub pieces: Vec<SpmPiece>,
    /// `TrainerSpec.model_type`: 1 unigram (the default), 2 BPE, 3 word, 4 char.
    pub model_type: u64,
    /// `TrainerSpec.byte_fallback`: unknown characters become `<0xNN>` pieces.
    pub byte_fallback: bool,
    /// `NormalizerSpec.add_dummy_prefix`: a `▁` is prepended to the input.
    pub add_dummy_prefix: bool,
}

/// The `model_type` of SentencePiece BPE models (Llama, Yi, Mistral).
pub const MODEL_TYPE_BPE: u64 = 2;

/// Reads a `tokenizer.model`. Fields other than those of [`SpmModel`] are
/// skipped; malformed bytes are an error, never a panic.
pub fn read_spm_model(bytes: &[u8]) -> Result<SpmModel> {
    let mut model = SpmModel {
        pieces: Vec::new(),
        model_type: 1,
        byte_fallback: false,
        add_dummy_prefix: true,
    };
    let mut r = Reader(bytes);
    while !r.0.is_empty() {
        match r.field()? {
            (1, Payload::Bytes(msg)) => model.pieces.push(read_piece(msg)?),
            (2, Payload::Bytes(msg)) => {
                let mut t = Reader(msg);
                while !t.0.is_empty() {
                    match t.field()? {
                        (3, Payload::Varint(v)) => model.model_type = v,
                        (35, Payload::Varint(v)) => model.byte_fallback = v != 0,
                        _ => {}
                    }
                }
            }
            (3, Payload::Bytes(msg)) => {
                let mut n = Reader(msg);
                while !n.0.is_empty() {
                    if let (3, Payload::Varint(v)) = n.field()? {
                        model.add_dummy_prefix = v != 0;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(model)
}

fn read_piece(msg: &[u8]) -> Result<SpmPiece> {
    let mut p = Reader(msg);
    let (mut piece, mut score, mut kind) = (String::new(), 0.0, 1);
    while !p.0.is_empty() {
        match p.field()? {
            (1, Payload::Bytes(b)) => piece = String::from_utf8_lossy(b).into_owned(),
            (2, Payload::Fixed32(v)) => score = f32::from_le_bytes(v),
            (3, Payload::Varint(v)) => kind = v,
            _ => {}
        }
    }
    Ok(SpmPiece { piece, score, kind })
}

enum Payload<'a> {
    Varint(u64),
    Fixed32([u8; 4]),
    Bytes(&'a [u8]),
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some((&b, rest)) = self.0.split_first() else {
                bail!("truncated varint in tokenizer.model");
            };
            self.0 = rest;
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        bail!("varint longer than 10 bytes in tokenizer.model")
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.0.len() {
            bail!(
                "tokenizer.model field needs {n} bytes, only {} remain",
                self.0.len()
            );
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn field(&mut self) -> Result<(u64, Payload<'a>)> {
        let key = self.varint()?;
        let payload = match key & 7 {
            0 => Payload::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Payload::Varint(0)
            }
            2 => {
                let n = self.varint()? as usize;
                Payload::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Payload::Fixed32([b[0], b[1], b[2], b[3]])
            }
            w => bail!("unsupported protobuf wire type {w} in tokenizer.model"),
        };
        Ok((key >> 3, payload))
    }
}
