//! Running the binary with its stderr on a pseudo-terminal, to see what a
//! user at a terminal sees (colours, progress bars).

use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};

/// Runs `cmd` with stderr on an 80×24 pseudo-terminal and `TERM` set to
/// `term`; returns the exit code and every byte written to the terminal.
pub fn stderr_on_a_terminal(mut cmd: Command, term: &str) -> (i32, Vec<u8>) {
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors into the given ints; both are
    // owned below and closed exactly once.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: fresh descriptors from openpty, owned by nothing else.
    let (master, slave) = unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    cmd.env("TERM", term)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(slave));
    let mut child = cmd.spawn().unwrap();
    // The parent's copy of the terminal's child end must close, or reading
    // never ends.
    drop(cmd);
    let reader = std::thread::spawn(move || {
        let mut master = master;
        let mut bytes = Vec::new();
        // Linux answers EIO once the child's end is closed: that is the end.
        let _ = master.read_to_end(&mut bytes);
        bytes
    });
    let code = child.wait().unwrap().code().unwrap_or(-1);
    (code, reader.join().unwrap())
}
