//! The bearer token on a gRPC call, both ways: the proxies and zone CPs that present a token
//! (kuma-dp's ADS and admin streams, a zone's KDS streams, the instances' forwarded requests)
//! and the servers that read it. Taking the token out of the value and checking it is
//! meshzone-identity's job.

use tonic::metadata::MetadataMap;

const AUTHORIZATION: &str = "authorization";

/// Adds `authorization: Bearer <token>` to a call's metadata. A token read from a file keeps no
/// surrounding whitespace; an empty token adds nothing, so the server answers "no token". A
/// token that is not a valid header value (a control character) is refused here, by name.
pub fn present(metadata: &mut MetadataMap, token: &str) -> Result<(), InvalidToken> {
    let token = token.trim();
    if token.is_empty() {
        return Ok(());
    }
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| InvalidToken)?;
    metadata.insert(AUTHORIZATION, value);
    Ok(())
}

/// Whether [`present`] can send `token`: checked when a token file is read, so a bad file stops
/// the start naming it instead of failing every connection.
pub fn check(token: &str) -> Result<(), InvalidToken> {
    present(&mut MetadataMap::new(), token)
}

/// The `authorization` value a call presents, for `meshzone_identity::bearer_token`; none when
/// it presents none or one that is not text.
pub fn authorization(metadata: &MetadataMap) -> Option<&str> {
    metadata.get(AUTHORIZATION).and_then(|v| v.to_str().ok())
}

/// A token that cannot travel in a gRPC header.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "the token holds characters a gRPC header cannot carry (is the token file binary or multi-line?)"
)]
pub struct InvalidToken;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_presented_token_travels_as_a_bearer_header() {
        let cases = [
            ("abc.def.ghi", Some("Bearer abc.def.ghi")),
            ("  abc.def.ghi\n", Some("Bearer abc.def.ghi")),
            ("", None),
            ("\n", None),
        ];
        for (given, header) in cases {
            let mut md = MetadataMap::new();
            assert_eq!(present(&mut md, given), Ok(()), "{given:?}");
            assert_eq!(authorization(&md), header, "{given:?}");
        }
    }

    #[test]
    fn a_token_with_control_characters_is_refused() {
        let mut md = MetadataMap::new();
        assert_eq!(present(&mut md, "abc\u{7}def"), Err(InvalidToken));
        assert!(md.is_empty());
        assert_eq!(check("abc\ndef"), Err(InvalidToken));
        assert_eq!(check(" abc.def\n"), Ok(()));
    }
}
