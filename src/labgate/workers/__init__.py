"""The background workers of a labgate process, beside core (never imported by it): each reads the database or
the dataplane on its own thread and publishes what it finds as events. The assembly (labgate/service.py) starts
and stops them; the periodic ones run on labgate.periodic.Periodic.

    events.py       EventBus: the recent events, and delivery to each sink (queue, thread, retries, counts)
    sinks/          the transports the bus delivers to (syslog, file, webhook) and build_sinks
    connections.py  ConnectionWatcher: conntrack NEW events -> "connection" events
    health.py       HealthMonitor (probe.py: ICMP and TCP probes) -> address and port states, "health" events
    usage.py        UsageCollector: kernel counters -> per-forward usage totals
    ddns.py         DdnsUpdater: RFC 2136 updates for gateway and machine names
"""
