use crate::{Error, Explanation, Options, Outcome};

pub fn diff(_orig: &[u8], _patched: &[u8], _opts: &Options) -> Result<Outcome, Error> {
    Err(Error::Other("differ not yet implemented".into()))
}

pub fn explain(_orig: &[u8], _patched: &[u8], _func: &str, _opts: &Options) -> Result<Explanation, Error> {
    Err(Error::Other("differ not yet implemented".into()))
}
