//! Stop strings: text is released only once it cannot be the start of a stop string, so a stop string
//! split across tokens is still caught and never reaches the client (streaming or not).

#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
    stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
            stopped: false,
        }
    }

    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Adds generated text; returns what is safe to send and whether a stop string was reached (the
    /// returned text then ends right before it, and everything after is dropped).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        if self.stops.is_empty() {
            return (text.to_string(), false);
        }
        self.pending.push_str(text);
        // The earliest complete stop string wins.
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            self.stopped = true;
            return (out, true);
        }
        // Hold back the longest suffix that is a prefix of some stop string.
        let hold = self.held_suffix();
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    fn held_suffix(&self) -> usize {
        let p = &self.pending;
        let mut best = 0;
        for s in &self.stops {
            let max = s.len().saturating_sub(1).min(p.len());
            for n in (best + 1..=max).rev() {
                let start = p.len() - n;
                if p.is_char_boundary(start) && s.starts_with(&p[start..]) {
                    best = n;
                    break;
                }
            }
        }
        best
    }

    /// Generation ended without a stop string: whatever was held back is real text.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (t, stop) = m.push(p);
            out.push_str(&t);
            if stop {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn no_stops_passes_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn stop_inside_one_piece() {
        assert_eq!(run(&["END"], &["abcENDxyz"]), ("abc".into(), true));
    }

    #[test]
    fn stop_across_token_boundaries() {
        assert_eq!(
            run(&["\n\nUser:"], &["Hello", "\n", "\nUs", "er", ":", " more"]),
            ("Hello".into(), true)
        );
    }

    #[test]
    fn partial_match_that_fails_is_released() {
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("aST"), ("a".into(), false));
        assert_eq!(m.push("Ox"), ("STOx".into(), false));
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["cd", "b"], &["abcd"]), ("a".into(), true));
    }

    #[test]
    fn held_text_is_flushed_at_the_end() {
        assert_eq!(run(&["xyz"], &["abx", "y"]), ("abxy".into(), false));
    }

    #[test]
    fn multibyte_text_is_not_split() {
        assert_eq!(run(&["é!"], &["caf", "é", "?"]), ("café?".into(), false));
        assert_eq!(run(&["é!"], &["caf", "é", "!"]), ("caf".into(), true));
    }
}
