//! Offline replay of traffic through the routing rules (`switchboard routing simulate`).
