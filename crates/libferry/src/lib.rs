pub use ferry_capi;
