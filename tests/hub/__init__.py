"""Tests for weightkit.hub: download and push against a local fake Hub."""
