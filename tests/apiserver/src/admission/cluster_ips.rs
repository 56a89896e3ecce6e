//! ClusterIPs, as kube-apiserver allocates them: from
//! `--service-cluster-ip-range`, one range or one per family (the first is
//! the primary family), never handed out twice; and a Service's families
//! from its `ipFamilyPolicy`, `ipFamilies` and `clusterIPs`.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Mutex,
};

use serde_json::{Value, json};

/// An IP family, as the API names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Self::V4 } else { Self::V6 }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "IPv4" => Some(Self::V4),
            "IPv6" => Some(Self::V6),
            _ => None,
        }
    }
}

/// One range: its base, size, and the offsets in use.
struct Range {
    family: Family,
    base: u128,
    /// Prefix length.
    len: u32,
    used: Mutex<BTreeSet<u128>>,
}

impl Range {
    fn parse(cidr: &str) -> anyhow::Result<Self> {
        let (net, len) = cidr
            .split_once('/')
            .ok_or_else(|| anyhow::anyhow!("`{cidr}` is not a CIDR"))?;
        let len: u32 = len.parse()?;
        let ip: IpAddr = net.parse()?;
        let (family, bits, max) = match ip {
            IpAddr::V4(v4) => (Family::V4, u128::from(v4.to_bits()), 32),
            IpAddr::V6(v6) => (Family::V6, v6.to_bits(), 128),
        };
        // kube-apiserver: at most 2^20 addresses for IPv6, /8 to /30 for IPv4.
        let ok = match family {
            Family::V4 => (8..=30).contains(&len),
            Family::V6 => (108..=126).contains(&len),
        };
        anyhow::ensure!(
            ok,
            "service CIDR `{cidr}`: the prefix must be /8 to /30 for IPv4, /108 to /126 for IPv6"
        );
        let mask = u128::MAX.checked_shl(max - len).unwrap_or(0) & (u128::MAX >> (128 - max));
        Ok(Self {
            family,
            base: bits & mask,
            len: max - len,
            used: Mutex::new(BTreeSet::new()),
        })
    }

    fn size(&self) -> u128 {
        1u128 << self.len
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<u128>> {
        self.used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn addr(&self, offset: u128) -> IpAddr {
        let bits = self.base + offset;
        match self.family {
            Family::V4 => IpAddr::V4(Ipv4Addr::from_bits(u32::try_from(bits).unwrap_or_default())),
            Family::V6 => IpAddr::V6(Ipv6Addr::from_bits(bits)),
        }
    }

    /// The offset of `ip`, if usable: not the network address, nor IPv4's
    /// broadcast address.
    fn offset(&self, ip: IpAddr) -> Option<u128> {
        if Family::of(ip) != self.family {
            return None;
        }
        let bits = match ip {
            IpAddr::V4(v4) => u128::from(v4.to_bits()),
            IpAddr::V6(v6) => v6.to_bits(),
        };
        let offset = bits.checked_sub(self.base)?;
        let last = match self.family {
            Family::V4 => self.size() - 1,
            Family::V6 => self.size(),
        };
        (offset > 0 && offset < last).then_some(offset)
    }

    fn usable(&self) -> u128 {
        match self.family {
            Family::V4 => self.size() - 2,
            Family::V6 => self.size() - 1,
        }
    }

    fn cidr(&self) -> String {
        let max = if self.family == Family::V4 { 32 } else { 128 };
        format!("{}/{}", self.addr(0), max - self.len)
    }
}

/// The service ranges: one, or one per family, the primary first.
pub struct IpAllocator {
    ranges: Vec<Range>,
}

impl IpAllocator {
    /// From `CIDR` or `CIDR,CIDR` (one of each family).
    pub fn new(spec: &str) -> anyhow::Result<Self> {
        let ranges: Vec<Range> = spec
            .split(',')
            .map(|c| Range::parse(c.trim()))
            .collect::<anyhow::Result<_>>()?;
        anyhow::ensure!(
            (1..=2).contains(&ranges.len())
                && ranges.first().map(|r| r.family) != ranges.get(1).map(|r| r.family),
            "--service-cluster-ip-range: one CIDR, or two of different families"
        );
        Ok(Self { ranges })
    }

    fn range(&self, family: Family) -> Option<&Range> {
        self.ranges.iter().find(|r| r.family == family)
    }

    /// The families served, the primary first.
    pub fn families(&self) -> Vec<Family> {
        self.ranges.iter().map(|r| r.family).collect()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range(Family::of(ip))
            .is_some_and(|r| r.offset(ip).is_some())
    }

    /// The primary range's first address (the `kubernetes` Service's).
    pub fn first(&self) -> IpAddr {
        self.ranges
            .first()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |r| r.addr(1))
    }

    pub fn claim(&self, ip: IpAddr) -> Result<(), String> {
        let Some(range) = self.range(Family::of(ip)) else {
            return Err(format!(
                "{ip}: the cluster has no {} service range",
                Family::of(ip).name()
            ));
        };
        let Some(offset) = range.offset(ip) else {
            return Err(format!(
                "{ip}: provided IP is not in the valid range. The range of valid IPs is {}",
                range.cidr()
            ));
        };
        if !range.lock().insert(offset) {
            return Err(format!("{ip}: provided IP is already allocated"));
        }
        Ok(())
    }

    /// A random free address of `family`, so that a restart does not hand
    /// out a just released one next (as kube-apiserver's bitmap allocator).
    pub fn allocate(&self, family: Family) -> Result<IpAddr, String> {
        let range = self
            .range(family)
            .ok_or_else(|| format!("the cluster has no {} service range", family.name()))?;
        let mut used = range.lock();
        let usable = range.usable();
        if used.len() as u128 >= usable {
            return Err("range is full".into());
        }
        let start = rand::random::<u128>() % usable;
        // Bounded: at most every usable offset once; ranges are at most 2^20.
        for i in 0..usable {
            let offset = 1 + (start + i) % usable;
            if used.insert(offset) {
                return Ok(range.addr(offset));
            }
        }
        Err("range is full".into())
    }

    pub fn release(&self, ip: IpAddr) {
        if let Some(range) = self.range(Family::of(ip))
            && let Some(offset) = range.offset(ip)
        {
            range.lock().remove(&offset);
        }
    }
}

/// A Service's ClusterIPs and families, set as kube-apiserver sets them
/// (`clusterIP`, `clusterIPs`, `ipFamilies`, `ipFamilyPolicy`); an error
/// in the API server's words. What it claimed is released on error.
pub fn assign(spec: &mut Value, ips: &IpAllocator) -> Result<(), String> {
    let policy = spec
        .get("ipFamilyPolicy")
        .and_then(Value::as_str)
        .unwrap_or("SingleStack")
        .to_owned();
    let requested = requested(spec)?;
    let families = families(spec, &policy, &requested, &ips.families())?;
    let assigned = claim(ips, &families, &requested)?;
    let strings: Vec<String> = assigned.iter().map(ToString::to_string).collect();
    spec["clusterIP"] = json!(strings.first());
    spec["clusterIPs"] = json!(strings);
    spec["ipFamilies"] = json!(families.iter().map(|f| f.name()).collect::<Vec<_>>());
    spec["ipFamilyPolicy"] = json!(policy);
    Ok(())
}

/// An update's `ipFamilyPolicy`, as kube-apiserver applies it: to
/// `PreferDualStack` or `RequireDualStack`, a single-stack Service gets
/// its second family's address; to `SingleStack`, a dual-stack one gives
/// its second back. `spec` has the old allocated values already.
pub fn change_policy(old: &Value, spec: &mut Value, ips: &IpAllocator) -> Result<(), String> {
    let policy = spec
        .get("ipFamilyPolicy")
        .and_then(Value::as_str)
        .unwrap_or("SingleStack")
        .to_owned();
    if old.get("ipFamilyPolicy").and_then(Value::as_str) == Some(policy.as_str())
        || spec.get("clusterIP").and_then(Value::as_str) == Some("None")
    {
        return Ok(());
    }
    let mut addrs = requested(spec)?;
    let mut families: Vec<Family> = addrs.iter().map(|ip| Family::of(*ip)).collect();
    match policy.as_str() {
        "SingleStack" => {
            for ip in addrs.drain(1..) {
                ips.release(ip);
            }
            families.truncate(1);
        }
        "PreferDualStack" | "RequireDualStack" => {
            let other = ips.families().into_iter().find(|f| !families.contains(f));
            match other {
                Some(f) if families.len() == 1 => {
                    addrs.push(ips.allocate(f).map_err(|e| {
                        format!(
                            "spec.clusterIPs: Internal error: failed to allocate a serviceIP: {e}"
                        )
                    })?);
                    families.push(f);
                }
                _ if policy == "RequireDualStack" && families.len() < 2 => {
                    return Err("spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services".into());
                }
                _ => {}
            }
        }
        other => {
            return Err(format!(
                "spec.ipFamilyPolicy: Unsupported value: \"{other}\""
            ));
        }
    }
    let strings: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    spec["clusterIPs"] = json!(strings);
    spec["ipFamilies"] = json!(families.iter().map(|f| f.name()).collect::<Vec<_>>());
    Ok(())
}

/// The addresses `clusterIPs` (or `clusterIP`) asks for.
fn requested(spec: &Value) -> Result<Vec<IpAddr>, String> {
    let listed = spec
        .get("clusterIPs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let single = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let strings: Vec<String> = if listed.is_empty() {
        (!single.is_empty())
            .then(|| single.to_owned())
            .into_iter()
            .collect()
    } else {
        listed
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    strings
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse().map_err(|_| {
                format!("spec.clusterIPs[{i}]: Invalid value: \"{s}\": must be a valid IP address")
            })
        })
        .collect()
}

/// The Service's families: as asked, else those of the requested
/// addresses, else the cluster's primary; then as the policy says.
fn families(
    spec: &Value,
    policy: &str,
    requested: &[IpAddr],
    cluster: &[Family],
) -> Result<Vec<Family>, String> {
    let asked: Vec<Family> = spec
        .get("ipFamilies")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|f| {
            f.as_str()
                .and_then(Family::parse)
                .ok_or_else(|| format!("spec.ipFamilies: Unsupported value: {f}"))
        })
        .collect::<Result<_, _>>()?;
    let mut families: Vec<Family> = if asked.is_empty() {
        requested.iter().map(|ip| Family::of(*ip)).collect()
    } else {
        asked
    };
    if families.is_empty() {
        families.push(cluster.first().copied().unwrap_or(Family::V4));
    }
    match policy {
        "SingleStack" => {
            if families.len() > 1 {
                return Err("spec.ipFamilyPolicy: Invalid value: \"SingleStack\": must be RequireDualStack or PreferDualStack when multiple IP families are specified".into());
            }
        }
        "PreferDualStack" | "RequireDualStack" => {
            if families.len() == 1
                && let Some(other) = cluster.iter().find(|f| **f != families[0])
            {
                families.push(*other);
            }
            if policy == "RequireDualStack" && families.len() < 2 {
                return Err("spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services".into());
            }
        }
        other => {
            return Err(format!(
                "spec.ipFamilyPolicy: Unsupported value: \"{other}\": supported values: \"PreferDualStack\", \"RequireDualStack\", \"SingleStack\""
            ));
        }
    }
    if families.len() == 2 && families[0] == families[1] {
        return Err(format!(
            "spec.ipFamilies[1]: Duplicate value: \"{}\"",
            families[1].name()
        ));
    }
    if let Some(f) = families.iter().find(|f| !cluster.contains(f)) {
        return Err(format!(
            "spec.ipFamilies: Invalid value: \"{}\": not configured on this cluster",
            f.name()
        ));
    }
    Ok(families)
}

/// An address per family: the requested one claimed, else one allocated;
/// on an error, those taken are given back.
fn claim(
    ips: &IpAllocator,
    families: &[Family],
    requested: &[IpAddr],
) -> Result<Vec<IpAddr>, String> {
    let mut assigned: Vec<IpAddr> = Vec::new();
    for (i, family) in families.iter().enumerate() {
        let result = match requested.get(i) {
            Some(ip) if Family::of(*ip) != *family => Err(format!(
                "spec.clusterIPs[{i}]: Invalid value: \"{ip}\": expected an {} address",
                family.name()
            )),
            Some(ip) => ips
                .claim(*ip)
                .map(|()| *ip)
                .map_err(|e| format!("spec.clusterIPs: Invalid value: []string{{\"{ip}\"}}: failed to allocate IP {e}")),
            None => ips.allocate(*family).map_err(|e| {
                format!("spec.clusterIPs: Internal error: failed to allocate a serviceIP: {e}")
            }),
        };
        match result {
            Ok(ip) => assigned.push(ip),
            Err(e) => {
                for ip in &assigned {
                    ips.release(*ip);
                }
                return Err(e);
            }
        }
    }
    Ok(assigned)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cluster_ips_are_allocated_in_range_and_never_twice() {
        let ips = IpAllocator::new("10.96.0.0/28").unwrap();
        assert!(ips.claim(ip("10.96.0.5")).is_ok());
        assert!(
            ips.claim(ip("10.96.0.5"))
                .unwrap_err()
                .contains("already allocated")
        );
        assert!(
            ips.claim(ip("10.97.0.5"))
                .unwrap_err()
                .contains("not in the valid range")
        );
        assert!(ips.claim(ip("10.96.0.15")).is_err(), "broadcast address");
        let mut seen = BTreeSet::new();
        while let Ok(a) = ips.allocate(Family::V4) {
            assert!(ips.contains(a));
            assert!(seen.insert(a));
        }
        assert_eq!(seen.len(), 13, "14 usable addresses, one claimed");
        ips.release(ip("10.96.0.5"));
        assert_eq!(ips.allocate(Family::V4).unwrap(), ip("10.96.0.5"));
        assert!(ips.allocate(Family::V6).is_err(), "no IPv6 range");
    }

    #[test]
    fn dual_stack_ranges_allocate_both_families() {
        let ips = IpAllocator::new("10.96.0.0/12,fd00:10:96::/112").unwrap();
        assert_eq!(ips.families(), [Family::V4, Family::V6]);
        let v6 = ips.allocate(Family::V6).unwrap();
        assert!(v6.is_ipv6() && ips.contains(v6));
        assert!(ips.claim(ip("fd00:10:96::1")).is_ok());
        assert!(ips.claim(ip("fd00:10:97::1")).is_err());
        assert!(IpAllocator::new("10.96.0.0/12,10.100.0.0/16").is_err());
        assert!(IpAllocator::new("fd00::/64").is_err(), "more than 2^20");
    }

    #[test]
    fn the_policy_decides_the_families_and_their_addresses() {
        let dual = IpAllocator::new("10.96.0.0/12,fd00:10:96::/112").unwrap();
        let single = IpAllocator::new("10.96.0.0/12").unwrap();
        let assigned = |ips: &IpAllocator, spec: Value| {
            let mut spec = spec;
            assign(&mut spec, ips).map(|()| {
                (
                    spec["ipFamilies"].clone(),
                    spec["clusterIPs"].as_array().unwrap().len(),
                )
            })
        };
        assert_eq!(
            assigned(&dual, json!({})).unwrap(),
            (json!(["IPv4"]), 1),
            "SingleStack by default, the primary family"
        );
        assert_eq!(
            assigned(&dual, json!({"ipFamilyPolicy": "PreferDualStack"})).unwrap(),
            (json!(["IPv4", "IPv6"]), 2)
        );
        assert_eq!(
            assigned(
                &dual,
                json!({"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv6"]})
            )
            .unwrap(),
            (json!(["IPv6", "IPv4"]), 2)
        );
        assert_eq!(
            assigned(&dual, json!({"ipFamilies": ["IPv6"]})).unwrap(),
            (json!(["IPv6"]), 1)
        );
        assert_eq!(
            assigned(&single, json!({"ipFamilyPolicy": "PreferDualStack"})).unwrap(),
            (json!(["IPv4"]), 1),
            "preferred, not required"
        );
        assert!(
            assigned(&single, json!({"ipFamilyPolicy": "RequireDualStack"}))
                .unwrap_err()
                .contains("not configured for dual-stack")
        );
        assert!(assigned(&single, json!({"ipFamilies": ["IPv6"]})).is_err());
        let mut spec = json!({"ipFamilyPolicy": "RequireDualStack", "clusterIPs": ["fd00:10:96::a", "10.96.0.10"]});
        assign(&mut spec, &dual).unwrap();
        assert_eq!(spec["clusterIP"], "fd00:10:96::a");
        assert_eq!(spec["ipFamilies"], json!(["IPv6", "IPv4"]));
        // A failure gives back what was claimed.
        let mut spec = json!({"ipFamilyPolicy": "RequireDualStack", "clusterIPs": ["10.96.0.20", "10.96.0.21"]});
        assert!(assign(&mut spec, &dual).is_err());
        assert!(dual.claim(ip("10.96.0.20")).is_ok(), "released");
    }

    #[test]
    fn an_update_of_the_policy_adds_or_gives_back_the_second_family() {
        let dual = IpAllocator::new("10.96.0.0/12,fd00:10:96::/112").unwrap();
        let mut spec = json!({});
        assign(&mut spec, &dual).unwrap();
        let old = spec.clone();
        spec["ipFamilyPolicy"] = json!("PreferDualStack");
        change_policy(&old, &mut spec, &dual).unwrap();
        assert_eq!(spec["ipFamilies"], json!(["IPv4", "IPv6"]));
        let second: IpAddr = spec["clusterIPs"][1].as_str().unwrap().parse().unwrap();
        assert!(dual.claim(second).is_err(), "allocated");
        let old = spec.clone();
        spec["ipFamilyPolicy"] = json!("SingleStack");
        change_policy(&old, &mut spec, &dual).unwrap();
        assert_eq!(spec["ipFamilies"], json!(["IPv4"]));
        assert!(dual.claim(second).is_ok(), "released");
    }
}
