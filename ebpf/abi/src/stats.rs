//! Counters: per frontend, per backend, per drop reason and per event.
//!
//! `DropReason` and `Event` are indices into per-CPU arrays, never map values.

use crate::pod;

/// Traffic through one frontend or backend, both directions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}
const _: () = assert!(size_of::<TrafficStats>() == 24);

impl TrafficStats {
    #[must_use]
    pub const fn sum(self, other: Self) -> Self {
        Self {
            packets: self.packets.wrapping_add(other.packets),
            bytes: self.bytes.wrapping_add(other.bytes),
            new_flows: self.new_flows.wrapping_add(other.new_flows),
        }
    }
}

pod!(TrafficStats);

macro_rules! counter_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $value:literal => $label:literal,)* }) => {
        $(#[$doc])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant = $value,)*
        }

        impl $name {
            pub const ALL: &[Self] = &[$(Self::$variant,)*];
            #[expect(clippy::cast_possible_truncation, reason = "a handful of variants")]
            pub const COUNT: u32 = Self::ALL.len() as u32;

            /// Stable `snake_case` label, for tables and metrics.
            pub const fn label(self) -> &'static str {
                match self { $(Self::$variant => $label,)* }
            }
        }

        impl TryFrom<u32> for $name {
            type Error = u32;
            fn try_from(v: u32) -> Result<Self, u32> {
                match v { $($value => Ok(Self::$variant),)* other => Err(other) }
            }
        }
    };
}

counter_enum! {
    /// Why a packet was dropped (or, for rejects, answered with ICMP instead).
    DropReason {
        /// IPv4 header truncated, or IHL below 5; IPv6 header or extension
        /// headers truncated.
        MalformedIp = 0 => "malformed_ip",
        /// TCP or UDP header truncated.
        MalformedL4 = 1 => "malformed_l4",
        /// A later fragment addressed to a ClusterIP whose first fragment
        /// was not seen (ports are only in the first; lost, or out of
        /// order), or a first fragment that could not be remembered.
        Fragment = 2 => "fragment",
        /// Rejected: the Service has no usable endpoint (a packet, or a
        /// `connect()` or send refused with ECONNREFUSED by socket LB).
        NoEndpoints = 3 => "no_endpoints",
        /// Rejected: a ClusterIP on a port no Service has.
        UnknownPort = 4 => "unknown_port",
        /// Rejected: an unallocated address in the service CIDR.
        UnallocatedIp = 5 => "unallocated_ip",
        /// A frontend's backend slot was missing.
        NoBackend = 6 => "no_backend",
        /// A conntrack entry could not be created.
        CtInsert = 7 => "ct_insert",
        /// A packet rewrite helper failed.
        Rewrite = 8 => "rewrite",
        /// Building or sending the ICMP reject failed.
        RejectFailed = 9 => "reject_failed",
        /// A new flow to a load balancer address from outside its
        /// `loadBalancerSourceRanges`.
        SourceRange = 10 => "source_range",
        /// External traffic to a frontend with `externalTrafficPolicy:
        /// Local` and no endpoint on this node (kube-proxy drops it).
        NoLocalEndpoints = 11 => "no_local_endpoints",
        /// No free port to SNAT a flow to a backend on another node.
        SnatPorts = 12 => "snat_ports",
        /// A TCP segment that cannot start a flow (no SYN, or SYN with ACK
        /// or RST) and belongs to none: kube-proxy drops ctstate INVALID.
        CtInvalid = 13 => "ct_invalid",
        /// A translated packet larger than its route's MTU (each segment,
        /// for a GSO packet): BPF cannot fragment it.
        FragNeeded = 14 => "frag_needed",
        /// A packet from outside (at an external interface) whose source
        /// is one of the node's own addresses: forged.
        ForgedSource = 15 => "forged_source",
        /// A packet BPF would forward itself (XDP_TX, a redirect) whose
        /// time to live has run out: answered with ICMP time-exceeded, as
        /// a router does (an ICMP error itself is only dropped).
        TtlExceeded = 16 => "ttl_exceeded",
        /// A packet on a pod's interface to be translated (to a frontend,
        /// a backend's reply, an ICMP error) whose source is not routed
        /// through that interface (strict reverse path): a pod that lies
        /// about its address gets no Service translation.
        SpoofedSource = 17 => "spoofed_source",
        /// A packet to be handed to another program (IPv6 on pod
        /// interfaces, and from outside) that was not loaded.
        TailCall = 18 => "tail_call",
        /// A new flow from outside to a backend on another node, leaving
        /// through an external interface without an address of the flow's
        /// family to SNAT to (IPv6 on an interface, and node, without a
        /// global IPv6 address).
        NoSnatAddress = 19 => "no_snat_address",
    }
}

counter_enum! {
    /// Things the dataplane did, counted per CPU.
    Event {
        /// A new flow was balanced to a backend.
        NewFlow = 0 => "new_flow",
        /// A packet of a tracked flow was DNAT-ed.
        Established = 1 => "established",
        /// A reply was reverse-NATed.
        Reply = 2 => "reply",
        /// An ICMP port-unreachable was sent back.
        RejectSent = 3 => "reject_sent",
        /// A slot lookup missed during an update and slot 0 was used.
        SlotFallback = 4 => "slot_fallback",
        /// A tracked flow picked a new backend (its backend left, it idled out,
        /// or a closed TCP tuple was reused).
        Reselect = 5 => "reselect",
        /// A packet that is not Service traffic passed untouched.
        Pass = 6 => "pass",
        /// Two first packets of one flow raced on two CPUs; the later one
        /// followed the backend the earlier one chose.
        RaceLost = 7 => "race_lost",
        /// Socket LB: a `connect()` to a frontend was pointed at a backend.
        SockConnect = 8 => "sock_connect",
        /// Socket LB: an unconnected UDP send to a frontend went to a backend.
        SockSendmsg = 9 => "sock_sendmsg",
        /// Socket LB: a received datagram or a peer name showed the frontend
        /// again instead of the backend.
        SockReverse = 10 => "sock_reverse",
        /// A new flow followed its client's `ClientIP` affinity.
        AffinityHit = 11 => "affinity_hit",
        /// XDP sent a translated packet back out of the interface it came
        /// in on (a backend or client on another host).
        XdpTx = 12 => "xdp_tx",
        /// XDP sent a translated packet out of another external interface.
        XdpRedirect = 13 => "xdp_redirect",
        /// A new flow to a backend on another node was SNATed to this
        /// node's address.
        Snat = 14 => "snat",
        /// The next hop of a translated packet had no neighbour entry yet:
        /// the packet went to the stack, which resolves it.
        NeighMiss = 15 => "neigh_miss",
        /// A Maglev table entry was missing (mid-update): a slot was picked
        /// at random instead.
        MaglevMiss = 16 => "maglev_miss",
        /// North-south in TC (`--xdp-mode tc`): a translated packet was
        /// redirected to its next hop.
        TcForward = 17 => "tc_forward",
        /// A flow became established and moved to its table's established
        /// map, where nothing evicts it.
        CtEstablished = 18 => "ct_established",
        /// A flow became established but its table's established map was
        /// full: it stays in the new-flow map, where newer flows can evict it.
        CtUnprotected = 19 => "ct_unprotected",
        /// An ICMP error about a translated flow (unreachable, fragmentation
        /// needed, time exceeded) was translated back: its destination and
        /// the packet it quotes.
        IcmpError = 20 => "icmp_error",
        /// A pod reached itself through a Service (hairpin): its source
        /// became `HAIRPIN_ADDR` and the packet went straight back in; or
        /// its answer went back to it.
        Hairpin = 21 => "hairpin",
        /// A later fragment of a datagram was translated with the ports
        /// of its first fragment.
        FragmentFollowed = 22 => "fragment_followed",
        /// A `ClientIP` affinity entry could not be written (its map
        /// full): the flow works, the client's next one may land elsewhere.
        AffinityNotKept = 23 => "affinity_not_kept",
        /// Socket LB could not remember a socket's reverse translation (its
        /// map full): the connection works, but replies show the backend's
        /// address to `recvmsg`/`getpeername`.
        SockRevNotKept = 24 => "sock_rev_not_kept",
    }
}
