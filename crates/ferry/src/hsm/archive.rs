//! Archive back ends.
