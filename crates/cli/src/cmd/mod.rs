pub mod demo;
pub mod xenstored;
