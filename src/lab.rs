//! Throwaway clusters in network namespaces, for the demo and the real-kernel tests (being written).
