"""hoopwire: an identity-aware, inspecting gateway for machine access to production data."""

__version__ = "0.1.0"
