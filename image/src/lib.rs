//! cloudy-image: from a recipe and a board definition to a verified Cloudy image.
//!
//! - [`commands`]: the command line and one module per user command (`build`, `verify`,
//!   `boot`, `customise`); `main.rs` only calls [`commands::run`].
//! - [`stages`]: what `build` runs, in order: [`stages::bootstrap`] (cached rootfs),
//!   [`stages::squashfs`] (cached base layer), [`stages::agent`] (cross-built beside the
//!   bootstrap), [`stages::customise`] (the Cloudy layer), then the board's format
//!   ([`stages::iso`], [`stages::sdcard`] or [`stages::pxe`]), [`stages::finish`] and
//!   [`stages::verify`].
//! - Inputs: [`board`] (hardware/*.toml), [`recipe`] (recipes/*.toml), both read through
//!   [`config`]; [`seed`] checks a user's seed; [`identify`] tells a Cloudy image from any
//!   other file before `customise` changes it.
//! - Helpers the stages share: [`cache`], [`cmd`] (logged commands), [`progress`], [`tools`]
//!   (host tools), [`binfmt`], [`compress`], [`bmap`], [`qemu`], [`http`].

pub mod binfmt;
pub mod bmap;
pub mod board;
pub mod cache;
pub mod cmd;
pub mod commands;
pub mod compress;
pub mod config;
pub mod http;
pub mod identify;
pub mod pi_boot;
pub mod progress;
pub mod qemu;
pub mod recipe;
pub mod seed;
pub mod stages;
pub mod tools;
