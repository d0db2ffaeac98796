"""The plant-side collector: agents' payloads in, de-duplicated and decoded rows stored."""
