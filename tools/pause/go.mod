// The pod sandbox ("pause") program of the test node (scripts/k8s-env.sh up --node): no registry
// can serve registry.k8s.io/pause here, so it is built locally. Never published.
module tether.invalid/tools/pause

go 1.26.0
