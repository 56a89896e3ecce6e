//! Shared helpers of the privileged tests live in `sluice-lab` and in
//! `tests/packet/`; this library is empty on purpose.
