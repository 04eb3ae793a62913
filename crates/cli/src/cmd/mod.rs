pub mod bench;
pub mod demo;
pub mod emu;
pub mod guest;
pub mod xenstored;
