"""The orchestrator's modules: Redis server, peer environments, plan, report, charts."""
