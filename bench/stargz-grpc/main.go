// A minimal containerd-stargz-grpc for the cold-start bench (issue 18): the stargz snapshotter
// library's service package served as a containerd proxy snapshotter on a unix socket. Built by
// bench/coldstart-stargz.ts with Debian's Go in GOPATH mode against /usr/share/gocode.
//
//	stargz-grpc -root DIR -address SOCKET [-config FILE.toml]
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/stargz-snapshotter/service"
	"github.com/pelletier/go-toml"
	"google.golang.org/grpc"
)

func main() {
	root := flag.String("root", "/var/lib/containerd-stargz-grpc", "state directory")
	address := flag.String("address", "/run/containerd-stargz-grpc/containerd-stargz-grpc.sock", "unix socket to serve")
	configPath := flag.String("config", "", "TOML configuration (the service package's Config)")
	flag.Parse()
	var config service.Config
	if *configPath != "" {
		b, err := os.ReadFile(*configPath)
		if err != nil {
			log.Fatalf("config: %v", err)
		}
		if err := toml.Unmarshal(b, &config); err != nil {
			log.Fatalf("config %s: %v", *configPath, err)
		}
	}
	ctx := context.Background()
	sn, err := service.NewStargzSnapshotterService(ctx, *root, &config)
	if err != nil {
		log.Fatalf("snapshotter: %v", err)
	}
	rpc := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(rpc, snapshotservice.FromSnapshotter(sn))
	_ = os.Remove(*address)
	l, err := net.Listen("unix", *address)
	if err != nil {
		log.Fatalf("listen %s: %v", *address, err)
	}
	errc := make(chan error, 1)
	go func() { errc <- rpc.Serve(l) }()
	log.Printf("serving on %s", *address)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case s := <-sig:
		log.Printf("%v: stopping", s)
	case err := <-errc:
		log.Printf("serve: %v", err)
	}
	rpc.Stop()
	if err := sn.Close(); err != nil {
		log.Printf("close: %v", err)
	}
}
