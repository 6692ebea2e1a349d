"""wardgate's data plane: a lean mitmproxy Master and thin addons that call into the core."""
