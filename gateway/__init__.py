"""wardgate's core, free of mitmproxy: settings, errors, identity, policy, audit, admin API, CLI."""
