//! Who may read what: bearer-token principals and the rows their role may see.
//!
//! - The province (provincial data centre) sees every school.
//! - A city operator sees the schools of its city.
//! - An alliance sees its own schools.
//!
//! Enforcement is in one place: [`crate::warehouse::Warehouse::scoped`] builds, per role, a
//! DataFusion session whose `events`, `presence`, `schools` and `school_dim` tables are views
//! already filtered to the role's schools, and whose registry holds only those schools. Every
//! endpoint (the analytics and the SQL endpoint alike) runs on that session, so no query text,
//! filter string or SQL a caller writes can reach a foreign row: the unfiltered tables are not
//! in it.
//!
//! Tokens are never stored: the config holds the SHA-256 of each token (hex), which
//! `edubrain-cloud token` prints together with a fresh random token.

use std::collections::HashMap;
use std::fmt;

use edubrain_schemas::School;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::CloudError;

/// The kind of a role, as written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleKind {
    Province,
    City,
    Alliance,
}

/// A role with its scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "role", content = "scope", rename_all = "snake_case")]
pub enum Role {
    Province,
    City(String),
    Alliance(String),
}

impl Role {
    /// Whether this role may see `school`'s rows.
    pub fn sees(&self, school: &School) -> bool {
        match self {
            Role::Province => true,
            Role::City(c) => school.city == *c,
            Role::Alliance(a) => school.alliance == *a,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Province => write!(f, "province"),
            Role::City(c) => write!(f, "city:{c}"),
            Role::Alliance(a) => write!(f, "alliance:{a}"),
        }
    }
}

/// One principal in the config.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    /// Who this is, for logs and audit (e.g. `province-data-centre`, `c01-hub`).
    pub name: String,
    pub role: RoleKind,
    /// The city or alliance id; required for those roles, absent for the province.
    #[serde(default)]
    pub scope: Option<String>,
    /// SHA-256 of the bearer token, 64 hex characters.
    pub token_sha256: String,
}

/// `[access]`: the principals allowed to call the API.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    pub principals: Vec<PrincipalConfig>,
}

impl AccessConfig {
    /// Adds a principal for `token` (the demo and the tests, which make their own tokens).
    pub fn add(&mut self, name: &str, role: Role, token: &str) {
        let (role, scope) = match role {
            Role::Province => (RoleKind::Province, None),
            Role::City(c) => (RoleKind::City, Some(c)),
            Role::Alliance(a) => (RoleKind::Alliance, Some(a)),
        };
        self.principals.push(PrincipalConfig { name: name.into(), role, scope, token_sha256: token_sha256(token) });
    }
}

/// Hex SHA-256 of a token, as the config stores it.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh random bearer token: two v4 UUIDs from the OS's random source (244 random bits).
pub fn new_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

/// Why a request was refused (the label of `edubrain_cloud_api_denied_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    MissingToken,
    MalformedToken,
    UnknownToken,
    ForeignSchool,
}

impl Denial {
    pub fn as_str(self) -> &'static str {
        match self {
            Denial::MissingToken => "missing_token",
            Denial::MalformedToken => "malformed_token",
            Denial::UnknownToken => "unknown_token",
            Denial::ForeignSchool => "foreign_school",
        }
    }
}

/// The principals by token hash.
#[derive(Debug, Clone, Default)]
pub struct AccessControl {
    by_hash: HashMap<[u8; 32], Principal>,
}

impl AccessControl {
    /// Checks the config: hashes are 64 hex characters and unique, scopes present where needed
    /// and well-formed ids.
    pub fn new(config: &AccessConfig) -> Result<Self, CloudError> {
        let mut by_hash = HashMap::new();
        for p in &config.principals {
            let bad = |what: String| CloudError::Config(format!("access.principals {:?}: {what}", p.name));
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&p.token_sha256, &mut hash)
                .map_err(|_| bad(format!("token_sha256 {:?} is not 64 hex characters", p.token_sha256)))?;
            let scope = |kind: &str| -> Result<String, CloudError> {
                let s = p.scope.clone().ok_or_else(|| bad(format!("role {kind} needs a scope (the {kind} id)")))?;
                edubrain_schemas::validate::check_id("scope", &s).map_err(|e| bad(e.to_string()))?;
                Ok(s)
            };
            let role = match p.role {
                RoleKind::Province if p.scope.is_some() => return Err(bad("role province takes no scope".into())),
                RoleKind::Province => Role::Province,
                RoleKind::City => Role::City(scope("city")?),
                RoleKind::Alliance => Role::Alliance(scope("alliance")?),
            };
            if by_hash.insert(hash, Principal { name: p.name.clone(), role }).is_some() {
                return Err(bad("the same token hash is given twice".into()));
            }
        }
        Ok(Self { by_hash })
    }

    /// Authenticates an `Authorization` header value (`Bearer <token>`).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<&Principal, Denial> {
        let value = authorization.ok_or(Denial::MissingToken)?;
        let token = value.strip_prefix("Bearer ").map(str::trim).filter(|t| !t.is_empty()).ok_or(Denial::MalformedToken)?;
        // A hash lookup, not a comparison of secrets: its timing tells nothing about the token.
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&hash).ok_or(Denial::UnknownToken)
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn school(id: &str, city: &str, alliance: &str) -> School {
        let csv = format!(
            "school_id,school_name,city,county,alliance,zone,locale,level,enrolment,teachers_total,teachers_qualified,key_teachers,pe_art_teachers,senior_title_teachers,floor_area_m2,sports_area_m2,equipment_value_yuan,multimedia_classrooms,funding_yuan,strong\n\
             {id},x,{city},k1,{alliance},z1,urban,primary,800,50,48,6,5,16,6000,8000,2400000,20,9600000,true\n"
        );
        edubrain_schemas::registry::read_csv(csv.as_bytes()).unwrap().remove(0)
    }

    #[test]
    fn roles_see_their_own_schools() {
        let schools = [school("s1", "c01", "a1"), school("s2", "c01", "a2"), school("s3", "c02", "a3")];
        assert!(schools.iter().all(|s| Role::Province.sees(s)));
        let ids = |r: Role| schools.iter().filter(|s| r.sees(s)).map(|s| s.school_id.as_str()).collect::<Vec<_>>();
        assert_eq!(ids(Role::City("c01".into())), ["s1", "s2"]);
        assert_eq!(ids(Role::Alliance("a3".into())), ["s3"]);
        assert!(ids(Role::City("c09".into())).is_empty());
    }

    #[test]
    fn tokens_authenticate_to_their_principal_only() {
        let mut config = AccessConfig::default();
        config.add("dc", Role::Province, "secret-1");
        config.add("hub", Role::City("c01".into()), "secret-2");
        let ac = AccessControl::new(&config).unwrap();
        assert_eq!(ac.authenticate(Some("Bearer secret-2")).unwrap().role, Role::City("c01".into()));
        assert_eq!(ac.authenticate(Some("Bearer secret-1")).unwrap().name, "dc");
        assert_eq!(ac.authenticate(None), Err(Denial::MissingToken));
        assert_eq!(ac.authenticate(Some("Basic c2VjcmV0LTE=")), Err(Denial::MalformedToken));
        assert_eq!(ac.authenticate(Some("Bearer ")), Err(Denial::MalformedToken));
        assert_eq!(ac.authenticate(Some("Bearer secret-3")), Err(Denial::UnknownToken));
    }

    #[test]
    fn bad_principals_are_refused_with_their_name() {
        let bad = |toml_text: &str| AccessControl::new(&toml::from_str(toml_text).unwrap()).unwrap_err().to_string();
        let hash = token_sha256("t");
        assert!(
            bad(&format!("[[principals]]\nname='hub'\nrole='city'\ntoken_sha256='{hash}'")).contains("\"hub\": role city needs a scope")
        );
        assert!(bad("[[principals]]\nname='dc'\nrole='province'\ntoken_sha256='abc'").contains("is not 64 hex"));
        assert!(bad(&format!("[[principals]]\nname='x'\nrole='alliance'\nscope='a b'\ntoken_sha256='{hash}'")).contains("scope"));
        assert!(
            bad(&format!(
                "[[principals]]\nname='a'\nrole='province'\ntoken_sha256='{hash}'\n[[principals]]\nname='b'\nrole='province'\ntoken_sha256='{hash}'"
            ))
            .contains("twice")
        );
        assert!(toml::from_str::<AccessConfig>("[[principals]]\nname='a'\nrole='root'\ntoken_sha256='x'").is_err());
    }
}
