//! The [`ConsoleRepo`] contract, run on both backends (the sled test
//! below; `postgres/tests.rs` on PostgreSQL).

use super::*;

fn operator(name: &str) -> Operator {
    Operator {
        name: name.into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        totp_sealed: vec![1, 2, 3],
        totp_last_step: 0,
        created: "2026-01-01T00:00:00Z".into(),
    }
}

fn session(byte: u8, operator: &str, created: u64, last_seen: u64) -> ConsoleSession {
    ConsoleSession {
        id_hash: [byte; 32],
        operator: operator.into(),
        created,
        last_seen,
    }
}

/// Operators, the TOTP step's compare-and-set, sessions and their ends.
pub(crate) fn console_contract(s: &dyn ConsoleRepo) {
    assert_eq!(s.create_operator(&operator("ana")).unwrap(), Ok(()));
    assert_eq!(
        s.create_operator(&operator("ana")).unwrap(),
        Err(AlreadyExists)
    );
    assert_eq!(s.operator("ana").unwrap(), Some(operator("ana")));
    assert!(s.operator("bob").unwrap().is_none());

    // Each step is accepted once, and never an earlier one.
    assert!(s.accept_totp_step("ana", 100).unwrap());
    assert!(!s.accept_totp_step("ana", 100).unwrap());
    assert!(!s.accept_totp_step("ana", 99).unwrap());
    assert!(s.accept_totp_step("ana", 101).unwrap());
    assert!(!s.accept_totp_step("bob", 500).unwrap());
    assert_eq!(s.operator("ana").unwrap().unwrap().totp_last_step, 101);

    assert_eq!(s.create_operator(&operator("cy")).unwrap(), Ok(()));
    s.put_session(&session(1, "ana", 10, 20)).unwrap();
    s.put_session(&session(2, "ana", 10, 30)).unwrap();
    s.put_session(&session(3, "cy", 10, 40)).unwrap();
    s.put_session(&session(1, "ana", 10, 25)).unwrap();
    assert_eq!(s.session(&[1; 32]).unwrap().unwrap().last_seen, 25);
    s.delete_session(&[2; 32]).unwrap();
    assert!(s.session(&[2; 32]).unwrap().is_none());

    // A reset replaces the factor (the step counter too) and ends the sessions.
    let mut reset = operator("ana");
    reset.totp_sealed = vec![9];
    assert!(s.reset_operator(&reset).unwrap());
    assert_eq!(s.operator("ana").unwrap(), Some(reset));
    assert!(s.session(&[1; 32]).unwrap().is_none());
    assert!(s.session(&[3; 32]).unwrap().is_some());
    assert!(!s.reset_operator(&operator("bob")).unwrap());
    assert!(s.operator("bob").unwrap().is_none());

    // Pruning: idle or too old.
    s.put_session(&session(4, "ana", 100, 200)).unwrap();
    s.put_session(&session(5, "ana", 5, 300)).unwrap();
    assert_eq!(s.prune_sessions(150, 50).unwrap(), 2);
    assert!(s.session(&[4; 32]).unwrap().is_some());
    assert!(s.session(&[3; 32]).unwrap().is_none());

    // Removal takes the sessions with it.
    assert!(s.delete_operator("ana").unwrap());
    assert!(!s.delete_operator("ana").unwrap());
    assert!(s.operator("ana").unwrap().is_none());
    assert!(s.session(&[4; 32]).unwrap().is_none());
}

#[test]
fn console_records_on_sled() {
    let dir = tempfile::tempdir().unwrap();
    let store = sled::SledStore::open(&dir.path().join("db")).unwrap();
    console_contract(&store);
    console_contract(&Guarded::new(
        sled::SledStore::open(&dir.path().join("db2")).unwrap(),
    ));
}
