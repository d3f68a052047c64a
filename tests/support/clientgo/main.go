// konductor-clientgo-elector: a real client-go leader-election contender for
// konductor's interoperability tests.
//
// It runs client-go's own tools/leaderelection with a LeaseLock (the vendored
// client-go of the Kubernetes source the tests build kube-apiserver from) and
// prints one line per event on stdout, so that a test can compare when this
// process led with when konductor led (an independent witness):
//
//	<CLOCK_MONOTONIC ns> <unix ns> <event> [<detail>]
//
// Events: "ready", "start-leading" (OnStartedLeading ran), "stop-leading"
// (OnStoppedLeading ran after a leadership period), "leader <identity>"
// (OnNewLeader), "exit". CLOCK_MONOTONIC is the clock of Python's
// time.monotonic_ns() on Linux, so the two can be compared on one machine.
//
// SIGTERM or SIGINT cancels the context: with -release-on-cancel client-go
// then releases the Lease (holderIdentity "", leaseDurationSeconds 1).
// After losing leadership it campaigns again unless -once is given.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

var out sync.Mutex

func emit(event string, detail string) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err)
	}
	out.Lock()
	defer out.Unlock()
	line := fmt.Sprintf("%d %d %s", ts.Nano(), time.Now().UnixNano(), event)
	if detail != "" {
		line += " " + detail
	}
	fmt.Fprintln(os.Stdout, line)
	os.Stdout.Sync()
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig path")
	namespace := flag.String("namespace", "default", "namespace of the Lease")
	name := flag.String("name", "", "name of the Lease")
	identity := flag.String("identity", "", "holderIdentity to write")
	leaseDuration := flag.Duration("lease-duration", 4*time.Second, "LeaseDuration")
	renewDeadline := flag.Duration("renew-deadline", 2500*time.Millisecond, "RenewDeadline")
	retryPeriod := flag.Duration("retry-period", 500*time.Millisecond, "RetryPeriod")
	requestTimeout := flag.Duration("request-timeout", 10*time.Second, "timeout of each API request (rest.Config.Timeout)")
	releaseOnCancel := flag.Bool("release-on-cancel", true, "release the Lease when the context is cancelled")
	once := flag.Bool("once", false, "exit after the first leadership period instead of campaigning again")
	flag.Parse()
	if *kubeconfig == "" || *name == "" || *identity == "" {
		fmt.Fprintln(os.Stderr, "usage: -kubeconfig PATH -name LEASE -identity ID [flags]")
		os.Exit(2)
	}

	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubeconfig:", err)
		os.Exit(1)
	}
	config.Timeout = *requestTimeout
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		os.Exit(1)
	}

	ctx, cancel := context.WithCancel(context.Background())
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-signals
		emit("signal", s.String())
		cancel()
	}()

	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: *name, Namespace: *namespace},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: *identity},
	}
	emit("ready", *identity)
	for ctx.Err() == nil {
		var led int32 // set once OnStartedLeading ran (it runs in its own goroutine)
		elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   *leaseDuration,
			RenewDeadline:   *renewDeadline,
			RetryPeriod:     *retryPeriod,
			ReleaseOnCancel: *releaseOnCancel,
			Name:            *name,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(leading context.Context) {
					atomic.StoreInt32(&led, 1)
					emit("start-leading", "")
				},
				OnStoppedLeading: func() {
					if atomic.LoadInt32(&led) == 1 {
						emit("stop-leading", "")
					}
				},
				OnNewLeader: func(id string) { emit("leader", id) },
			},
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "leader election config:", err)
			os.Exit(2)
		}
		elector.Run(ctx)
		if *once && atomic.LoadInt32(&led) == 1 {
			break
		}
	}
	emit("exit", "")
}
