"""Pure rules of dispatchd: records, the lifecycle, scoring and routing. No I/O here."""
