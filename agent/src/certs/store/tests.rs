//! The file store: timestamped files, the `-current.pem` symlink, modes,
//! and files that are not what they should be.

use std::os::unix::fs::PermissionsExt as _;

use super::*;

/// A self-signed certificate for `key` (the store does not check issuers).
fn cert_for(key: &rcgen::KeyPair) -> String {
    let mut params = rcgen::CertificateParams::new(vec!["node-1".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "system:node:node-1");
    params.self_signed(key).unwrap().pem()
}

fn key() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

#[test]
fn an_update_becomes_current_through_the_symlink_and_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path(), "kubelet-client");
    assert!(store.current().unwrap().is_none());

    let k1 = key();
    let first = store.update(&cert_for(&k1), &k1.serialize_pem()).unwrap();
    let current = store.current().unwrap().unwrap();
    assert_eq!(current.leaf.subject_cn, "system:node:node-1");
    assert_eq!(current.leaf.sans, ["node-1"]);
    assert!(
        fs::symlink_metadata(store.current_path())
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read_link(store.current_path()).unwrap(), first);
    assert_eq!(
        fs::metadata(&first).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let name = first.file_name().unwrap().to_str().unwrap().to_owned();
    assert!(name.starts_with("kubelet-client-2"), "{name}");
    assert_eq!(first.extension().unwrap(), "pem");

    // A second one (within the same second, too) replaces it; the old file
    // stays, as client-go leaves it.
    let k2 = key();
    let second = store.update(&cert_for(&k2), &k2.serialize_pem()).unwrap();
    assert_ne!(first, second);
    assert!(first.exists());
    assert_eq!(fs::read_link(store.current_path()).unwrap(), second);
    assert_ne!(
        store.current().unwrap().unwrap().leaf.serial,
        current.leaf.serial
    );
}

#[test]
fn corrupt_mismatched_or_keyless_files_are_errors_not_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path(), "kubelet-client");
    let (k1, k2) = (key(), key());
    store.update(&cert_for(&k1), &k2.serialize_pem()).unwrap();
    let err = store.current().unwrap_err().to_string();
    assert!(err.contains("does not match"), "{err}");

    store.update(&cert_for(&k1), "").unwrap();
    assert!(
        store
            .current()
            .unwrap_err()
            .to_string()
            .contains("no private key")
    );

    let target = fs::read_link(store.current_path()).unwrap();
    fs::write(&target, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    assert!(store.current().is_err());
}

#[test]
fn an_interrupted_swap_is_finished_and_a_regular_current_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path(), "kubelet-server");
    let k = key();
    let file = store.update(&cert_for(&k), &k.serialize_pem()).unwrap();
    // A crash between the two steps leaves only `-updated.pem`.
    fs::rename(store.current_path(), store.updated_path()).unwrap();
    assert!(store.current().unwrap().is_none());
    store.recover().unwrap();
    assert_eq!(fs::read_link(store.current_path()).unwrap(), file);

    fs::remove_file(store.current_path()).unwrap();
    fs::write(store.current_path(), fs::read_to_string(&file).unwrap()).unwrap();
    let err = store.update(&cert_for(&k), &k.serialize_pem()).unwrap_err();
    assert!(err.to_string().contains("regular file"), "{err}");
}
