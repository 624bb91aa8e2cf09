//! What the VM tier's guest programs print: one `ok N - name` or `not ok N - name: why` line
//! per check (the Test Anything Protocol's form), `# ...` lines for figures, and a closing
//! `P passed, F failed` line that the host reads from the serial console.

use std::process::ExitCode;

/// The checks of one guest program so far.
#[derive(Default)]
pub struct Report {
    passed: usize,
    failed: usize,
}

impl Report {
    /// Prints `result` of the check `name`.
    pub fn check(&mut self, name: &str, result: anyhow::Result<()>) {
        let number = self.passed + self.failed + 1;
        match result {
            Ok(()) => {
                self.passed += 1;
                println!("ok {number} - {name}");
            }
            Err(e) => {
                self.failed += 1;
                println!("not ok {number} - {name}: {e:#}");
            }
        }
    }

    /// Prints the closing line; success only if every check passed.
    pub fn finish(self) -> ExitCode {
        println!("{} passed, {} failed", self.passed, self.failed);
        if self.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}
