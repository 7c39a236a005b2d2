// Command k8s-testenv is a multi-call binary holding kube-apiserver, kube-controller-manager,
// kube-scheduler, kubelet, kube-proxy and kubectl of one Kubernetes release (the last three make
// the test node of `scripts/k8s-env.sh up --node`). The role is argv[0] (a symlink name) or the first argument:
//
//	k8s-testenv kube-apiserver --etcd-servers=... (or a symlink named kube-apiserver)
//
// Only the selected role's cobra command is constructed: the apiserver and controller-manager
// option constructors both register the "kube" component in a process-global registry and would
// fail if both were built in one process.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	_ "time/tzdata" // CronJob time zones, as the upstream mains do

	_ "k8s.io/client-go/plugin/pkg/client/auth" // kubectl auth plugins, as upstream kubectl
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	kcmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxyapp "k8s.io/kubernetes/cmd/kube-proxy/app"
	schedapp "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubeletapp "k8s.io/kubernetes/cmd/kubelet/app"
)

const usage = "usage: k8s-testenv kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy|kubectl [flags]"

func main() {
	role := filepath.Base(os.Args[0])
	if role == "k8s-testenv" {
		if len(os.Args) < 2 {
			fmt.Fprintln(os.Stderr, usage)
			os.Exit(2)
		}
		role = os.Args[1]
		// cobra and kubectl's plugin lookup read os.Args: make it look like the real binary.
		os.Args = append([]string{role}, os.Args[2:]...)
	}
	switch role {
	case "kube-apiserver":
		os.Exit(cli.Run(apiserverapp.NewAPIServerCommand()))
	case "kube-controller-manager":
		os.Exit(cli.Run(kcmapp.NewControllerManagerCommand()))
	case "kube-scheduler":
		os.Exit(cli.Run(schedapp.NewSchedulerCommand()))
	case "kubelet":
		// As upstream cmd/kubelet: the command installs its own signal handling.
		os.Exit(cli.Run(kubeletapp.NewKubeletCommand(context.Background())))
	case "kube-proxy":
		os.Exit(cli.Run(proxyapp.NewProxyCommand()))
	case "kubectl":
		// As upstream: set klog verbosity before the command is built (plugins, .kuberc).
		logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args)) //nolint:errcheck
		if err := cli.RunNoErrOutput(kubectlcmd.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
	default:
		fmt.Fprintf(os.Stderr, "unknown role %q\n%s\n", role, usage)
		os.Exit(2)
	}
}
