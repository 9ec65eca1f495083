//! Turns on this machine's job users. The end of a job kills every process of its user, as on an
//! instance, and the tests check that nothing of the user's is left: two tests running jobs as the
//! same user at once would kill and see each other's processes. Every test that runs a job (or the
//! rootless engine) as a shared user (`nobody`, `flotilla-ci-job`) holds that user's turn for the
//! job's length; tests of one binary share these turns whichever file they are in.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// Waits for `user`'s turn and holds it until the guard drops. A test that failed while holding a
/// turn does not poison it for the rest.
pub fn turn(user: &str) -> MutexGuard<'static, ()> {
    static TURNS: Mutex<Option<HashMap<String, &'static Mutex<()>>>> = Mutex::new(None);
    let user_turn: &'static Mutex<()> = {
        let mut turns = TURNS.lock().unwrap_or_else(|p| p.into_inner());
        turns
            .get_or_insert_with(HashMap::new)
            .entry(user.to_string())
            .or_insert_with(|| Box::leak(Box::new(Mutex::new(()))))
    };
    user_turn.lock().unwrap_or_else(|p| p.into_inner())
}
