//! Per-device MQTT passwords derived from one fleet secret, so a simulated fleet of any size
//! needs one secret, not a list: `password = hex(HMAC-SHA256(secret, device id))[..32]`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The password of `device_id` under `secret`.
pub fn device_password(secret: &str, device_id: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(device_id.as_bytes());
    let mut password = hex::encode(mac.finalize().into_bytes());
    password.truncate(32);
    password
}

/// `user:password` lines for devices `0..devices` (the input `mosquitto_passwd -U` hashes).
pub fn password_lines(secret: &str, devices: usize) -> impl Iterator<Item = String> + '_ {
    (0..devices).map(move |index| {
        let id = crate::io::sources::fleet::device_id(index);
        let password = device_password(secret, &id);
        format!("{id}:{password}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_differ_per_device_and_secret() {
        let a = device_password("s", "dev-000000");
        assert_eq!(a.len(), 32);
        assert_ne!(a, device_password("s", "dev-000001"));
        assert_ne!(a, device_password("t", "dev-000000"));
        assert_eq!(a, device_password("s", "dev-000000"));
        let lines: Vec<_> = password_lines("s", 2).collect();
        assert_eq!(lines[0], format!("dev-000000:{a}"));
    }
}
