//! The DATA body decoder: undoes dot-stuffing and finds the `CRLF . CRLF` terminator, counting
//! bytes so an oversized message is read to its end (to keep the session in sync) but not kept.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    LineStart,
    Mid,
    Cr,
    Dot,
    DotCr,
}

pub struct DataDecoder {
    state: State,
    limit: usize,
    size: usize,
    pub body: Vec<u8>,
}

impl DataDecoder {
    pub fn new(limit: usize) -> DataDecoder {
        DataDecoder { state: State::LineStart, limit, size: 0, body: Vec::new() }
    }

    /// True when the message exceeded the limit; its bytes were dropped.
    pub fn overflowed(&self) -> bool {
        self.size > self.limit
    }

    fn emit(&mut self, b: u8) {
        self.size += 1;
        if self.size <= self.limit {
            self.body.push(b);
        }
    }

    fn after(b: u8) -> State {
        match b {
            b'\r' => State::Cr,
            b'\n' => State::LineStart,
            _ => State::Mid,
        }
    }

    /// Feed bytes; returns `Some(consumed)` once the terminator was seen (the bytes after it
    /// belong to the next command), `None` if all of `input` was consumed and more is needed.
    pub fn feed(&mut self, input: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            // Fast path: copy a run of ordinary bytes in one go.
            if self.state == State::Mid {
                let run = input[i..].iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(input.len() - i);
                if run > 0 {
                    let end = i + run;
                    let room = self.limit.saturating_sub(self.size);
                    self.body.extend_from_slice(&input[i..end.min(i + room)]);
                    self.size += run;
                    i = end;
                    continue;
                }
            }
            let b = input[i];
            i += 1;
            self.state = match self.state {
                State::LineStart if b == b'.' => State::Dot,
                State::Dot if b == b'\r' => State::DotCr,
                State::DotCr if b == b'\n' => return Some(i),
                State::DotCr => {
                    // ".\r" followed by something else: the dot was an escape.
                    self.emit(b'\r');
                    self.emit(b);
                    Self::after(b)
                }
                _ => {
                    self.emit(b);
                    Self::after(b)
                }
            };
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(chunks: &[&[u8]], limit: usize) -> (Vec<u8>, usize, bool) {
        let mut d = DataDecoder::new(limit);
        for (n, c) in chunks.iter().enumerate() {
            if let Some(used) = d.feed(c) {
                assert_eq!(n, chunks.len() - 1, "terminator in the last chunk");
                return (d.body.clone(), used, d.overflowed());
            }
        }
        panic!("no terminator");
    }

    #[test]
    fn unstuffs_and_stops_at_terminator() {
        let (body, used, over) = decode(&[b"Subject: x\r\n\r\n..hidden\r\n.\r\nQUIT\r\n"], 1000);
        assert_eq!(body, b"Subject: x\r\n\r\n.hidden\r\n");
        assert_eq!(used, 27);
        assert!(!over);
    }

    #[test]
    fn terminator_split_across_reads_and_empty_message() {
        let (body, _, _) = decode(&[b"a\r", b"\n", b".", b"\r", b"\n"], 1000);
        assert_eq!(body, b"a\r\n");
        let (body, used, _) = decode(&[b".\r\n"], 1000);
        assert_eq!((body.len(), used), (0, 3));
    }

    #[test]
    fn dot_inside_line_is_data() {
        let (body, _, _) = decode(&[b"a.b\r\n .\r\nx.\r\n.\r\n"], 1000);
        assert_eq!(body, b"a.b\r\n .\r\nx.\r\n");
    }

    #[test]
    fn oversize_is_read_to_the_end_but_not_kept() {
        let big = vec![b'x'; 5000];
        let (body, _, over) = decode(&[&big, b"\r\n.\r\n"], 100);
        assert!(over);
        assert_eq!(body.len(), 100);
    }
}
