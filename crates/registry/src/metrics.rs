//! The names and meaning of the registry's metrics.

corral_core::metrics! {
    /// Live agents listing a capability, per `capability`: at most
    /// [`MAX_CAPABILITY_LABELS`](crate::MAX_CAPABILITY_LABELS) of them,
    /// the rest counted under `other`.
    gauge REGISTRY_AGENTS = "corral_registry_agents",
        "Live agents in the registry that list a capability, per capability.";
    /// Agents that joined, left or expired, per `change`.
    counter REGISTRY_CHANGES_TOTAL = "corral_registry_changes_total",
        "Agents that joined, left or expired the registry, per change.";
}
