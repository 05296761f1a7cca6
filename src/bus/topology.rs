//! Where Redis is, from `redisUrl`: one node (`redis://`, `rediss://`), a master found through
//! Sentinel (`redis+sentinel://`, `rediss+sentinel://`) or a Redis Cluster (`redis+cluster://`,
//! `rediss+cluster://`). Parsing only; connecting is `bus/redis.rs`'s.

use percent_encoding::percent_decode_str;

use crate::error::{codes, Error, Result};

/// A host and port.
pub type Addr = (String, u16);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One node, the URL as given (`redis://` or `rediss://`).
    Node(String),
    Sentinel(SentinelSet),
    Cluster(ClusterSeeds),
}

/// `redis+sentinel://[user:pass@]host:port[,host:port...]/MASTER_NAME[/db][?sentinelPassword=…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelSet {
    pub tls: bool,
    /// `user:pass` as written (percent-encoded): the data nodes' credentials.
    pub userinfo: Option<String>,
    pub sentinels: Vec<Addr>,
    pub master: String,
    pub db: i64,
    /// Credentials for the sentinels themselves (query `sentinelPassword`, `sentinelUsername`).
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
}

/// `redis+cluster://[user:pass@]host:port[,host:port...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSeeds {
    pub tls: bool,
    /// `user:pass` as written (percent-encoded), for connections to single nodes.
    pub userinfo: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub seeds: Vec<Addr>,
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(codes::INVALID_OPTION, format!("invalid redisUrl: {}", message.into()))
}

fn decode(s: &str) -> Result<String> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| invalid("credentials are not UTF-8 once percent-decoded"))
}

/// `host:port` (`[v6]:port`), `default_port` when the port is left out.
fn parse_addr(s: &str, default_port: u16) -> Result<Addr> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) =
            rest.split_once(']').ok_or_else(|| invalid(format!("\"{s}\": unclosed [")))?;
        (host, after.strip_prefix(':'))
    } else {
        match s.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err(invalid(format!("\"{s}\": a host is missing")));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| invalid(format!("\"{s}\": the port must be 1 to 65535")))?,
    };
    Ok((host.to_string(), port))
}

impl Topology {
    pub fn parse(url: &str) -> Result<Self> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(invalid(
                "expected redis://, rediss://, redis+sentinel:// or redis+cluster://",
            ));
        };
        let (tls, kind) = match scheme {
            "redis" | "rediss" | "unix" | "redis+unix" => {
                return Ok(Topology::Node(url.to_string()))
            }
            "redis+sentinel" => (false, "sentinel"),
            "rediss+sentinel" => (true, "sentinel"),
            "redis+cluster" => (false, "cluster"),
            "rediss+cluster" => (true, "cluster"),
            other => {
                return Err(invalid(format!(
                    "unknown scheme {other}://: use redis://, rediss://, redis+sentinel://, \
                     rediss+sentinel://, redis+cluster:// or rediss+cluster://"
                )))
            }
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p),
            None => (rest, ""),
        };
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let default_port = if kind == "sentinel" { 26379 } else { 6379 };
        let addrs = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| parse_addr(h, default_port))
            .collect::<Result<Vec<_>>>()?;
        if addrs.is_empty() {
            return Err(invalid(format!("{scheme}:// needs at least one host:port")));
        }
        let mut sentinel_username = None;
        let mut sentinel_password = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match (kind, k) {
                ("sentinel", "sentinelPassword") => sentinel_password = Some(decode(v)?),
                ("sentinel", "sentinelUsername") => sentinel_username = Some(decode(v)?),
                _ => {
                    return Err(invalid(format!(
                        "unknown query parameter \"{k}\" (a {scheme}:// URL takes {})",
                        if kind == "sentinel" {
                            "sentinelPassword and sentinelUsername"
                        } else {
                            "none"
                        }
                    )))
                }
            }
        }
        if kind == "cluster" {
            if !path.is_empty() {
                return Err(invalid("a Redis Cluster has only database 0: remove the /path"));
            }
            let (username, password) = match userinfo {
                None => (None, None),
                Some(u) => match u.split_once(':') {
                    Some((user, pass)) => {
                        (Some(decode(user)?).filter(|u| !u.is_empty()), Some(decode(pass)?))
                    }
                    None => (None, Some(decode(u)?)),
                },
            };
            return Ok(Topology::Cluster(ClusterSeeds {
                tls,
                userinfo: userinfo.map(str::to_string),
                username,
                password,
                seeds: addrs,
            }));
        }
        let mut parts = path.split('/').filter(|p| !p.is_empty());
        let master = parts.next().map(decode).transpose()?.ok_or_else(|| {
            invalid("redis+sentinel:// needs the master name: …/MASTER_NAME[/db]")
        })?;
        let db = match parts.next() {
            None => 0,
            Some(db) => {
                db.parse().map_err(|_| invalid(format!("\"{db}\" is not a database number")))?
            }
        };
        if parts.next().is_some() {
            return Err(invalid("redis+sentinel://hosts/MASTER_NAME[/db]: too many path parts"));
        }
        Ok(Topology::Sentinel(SentinelSet {
            tls,
            userinfo: userinfo.map(str::to_string),
            sentinels: addrs,
            master,
            db,
            sentinel_username,
            sentinel_password,
        }))
    }

    pub fn is_tls(&self) -> bool {
        match self {
            Topology::Node(url) => url.starts_with("rediss://"),
            Topology::Sentinel(s) => s.tls,
            Topology::Cluster(c) => c.tls,
        }
    }
}

/// The URL of one node with these credentials and database.
pub fn node_url(tls: bool, userinfo: Option<&str>, (host, port): &Addr, db: i64) -> String {
    let scheme = if tls { "rediss" } else { "redis" };
    let host = if host.contains(':') { format!("[{host}]") } else { host.clone() };
    match userinfo {
        Some(u) => format!("{scheme}://{u}@{host}:{port}/{db}"),
        None => format!("{scheme}://{host}:{port}/{db}"),
    }
}

impl SentinelSet {
    /// The URL of a sentinel (its own credentials, no database).
    pub fn sentinel_url(&self, addr: &Addr) -> String {
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let userinfo = match (&self.sentinel_username, &self.sentinel_password) {
            (None, None) => None,
            (user, pass) => Some(format!(
                "{}:{}",
                enc(user.as_deref().unwrap_or("")),
                enc(pass.as_deref().unwrap_or(""))
            )),
        };
        let url = node_url(self.tls, userinfo.as_deref(), addr, 0);
        url.strip_suffix("/0").unwrap_or(&url).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(h: &str, p: u16) -> Addr {
        (h.to_string(), p)
    }

    #[test]
    fn plain_urls_stay_as_they_are() {
        for url in ["redis://127.0.0.1:6379", "rediss://u:p@h:6380/2"] {
            assert_eq!(Topology::parse(url).unwrap(), Topology::Node(url.to_string()));
        }
    }

    #[test]
    fn sentinel_urls() {
        let t = Topology::parse(
            "redis+sentinel://app:p%40ss@10.0.0.1:26379,10.0.0.2,[::1]:26380/mymaster/3?sentinelPassword=s%3Dx",
        )
        .unwrap();
        let Topology::Sentinel(s) = t else { panic!("{t:?}") };
        assert!(!s.tls);
        assert_eq!(s.userinfo.as_deref(), Some("app:p%40ss"));
        assert_eq!(
            s.sentinels,
            [addr("10.0.0.1", 26379), addr("10.0.0.2", 26379), addr("::1", 26380)]
        );
        assert_eq!((s.master.as_str(), s.db), ("mymaster", 3));
        assert_eq!(s.sentinel_password.as_deref(), Some("s=x"));
        assert_eq!(s.sentinel_url(&s.sentinels[2]), "redis://:s%3Dx@[::1]:26380");
        assert_eq!(
            node_url(true, s.userinfo.as_deref(), &addr("h", 1), 3),
            "rediss://app:p%40ss@h:1/3"
        );
        let Topology::Sentinel(s) = Topology::parse("rediss+sentinel://h:1/m").unwrap() else {
            panic!()
        };
        assert!(s.tls && s.db == 0 && s.sentinel_password.is_none());
        assert_eq!(s.sentinel_url(&s.sentinels[0]), "rediss://h:1");
    }

    #[test]
    fn cluster_urls() {
        let t = Topology::parse("rediss+cluster://u:p%3A@a:7000,b:7001").unwrap();
        assert_eq!(
            t,
            Topology::Cluster(ClusterSeeds {
                tls: true,
                userinfo: Some("u:p%3A".into()),
                username: Some("u".into()),
                password: Some("p:".into()),
                seeds: vec![addr("a", 7000), addr("b", 7001)],
            })
        );
        let Topology::Cluster(c) = Topology::parse("redis+cluster://:pw@a").unwrap() else {
            panic!()
        };
        assert_eq!(
            (c.username, c.password, c.seeds),
            (None, Some("pw".into()), vec![addr("a", 6379)])
        );
    }

    #[test]
    fn mistakes_are_refused_with_a_reason() {
        for bad in [
            "redis+sentinel://h:1",
            "redis+sentinel://h:1/",
            "redis+sentinel:///m",
            "redis+sentinel://h:0/m",
            "redis+sentinel://h:x/m",
            "redis+sentinel://h:1/m/x",
            "redis+sentinel://h:1/m/1/2",
            "redis+sentinel://h:1/m?password=x",
            "redis+cluster://",
            "redis+cluster://h:1/0",
            "redis+cluster://h:1?sentinelPassword=x",
            "redis+cluster://[::1:1",
            "http://h",
            "h:6379",
        ] {
            let e = Topology::parse(bad).unwrap_err();
            assert_eq!(e.code(), codes::INVALID_OPTION, "{bad}");
            assert!(e.message().starts_with("invalid redisUrl"), "{bad}: {}", e.message());
        }
    }
}
