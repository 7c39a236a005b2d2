// Command otlp-sink is a real OTLP/HTTP and OTLP/gRPC trace receiver for Tether's tracing test:
// the OpenTelemetry Collector's own otlpreceiver (go.opentelemetry.io/collector/receiver/otlpreceiver),
// with a consumer that appends every received batch, as OTLP JSON, one line per request, to a file.
//
// The full Collector (or Jaeger v2) would do the same but takes several times longer to build on
// a 2-core CI machine; the receiver is the part whose behaviour the test depends on.
//
//	otlp-sink -http 127.0.0.1:4318 -grpc 127.0.0.1:4317 -out traces.jsonl
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/config/configgrpc"
	"go.opentelemetry.io/collector/config/configoptional"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
	"go.opentelemetry.io/collector/receiver/receivertest"
)

func main() {
	httpAddr := flag.String("http", "127.0.0.1:4318", "OTLP/HTTP listen address")
	grpcAddr := flag.String("grpc", "", "OTLP/gRPC listen address (empty: off)")
	out := flag.String("out", "traces.jsonl", "file that receives one OTLP JSON document per request")
	flag.Parse()

	f, err := os.OpenFile(*out, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		log.Fatalf("otlp-sink: %v", err)
	}
	defer f.Close()
	var mu sync.Mutex
	marshaler := &ptrace.JSONMarshaler{}
	sink, err := consumer.NewTraces(func(_ context.Context, td ptrace.Traces) error {
		b, err := marshaler.MarshalTraces(td)
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		if _, err := f.Write(append(b, '\n')); err != nil {
			return err
		}
		return f.Sync()
	})
	if err != nil {
		log.Fatalf("otlp-sink: %v", err)
	}

	factory := otlpreceiver.NewFactory()
	cfg := factory.CreateDefaultConfig().(*otlpreceiver.Config)
	// GetOrInsertDefault turns the default (disabled) protocol settings into enabled ones.
	cfg.Protocols.HTTP.GetOrInsertDefault().ServerConfig.NetAddr.Endpoint = *httpAddr
	if *grpcAddr != "" {
		cfg.Protocols.GRPC.GetOrInsertDefault().NetAddr.Endpoint = *grpcAddr
	} else {
		cfg.Protocols.GRPC = configoptional.None[configgrpc.ServerConfig]()
	}

	ctx := context.Background()
	settings := receivertest.NewNopSettings(factory.Type())
	recv, err := factory.CreateTraces(ctx, settings, cfg, sink)
	if err != nil {
		log.Fatalf("otlp-sink: %v", err)
	}
	if err := recv.Start(ctx, componenttest{}); err != nil {
		log.Fatalf("otlp-sink: %v", err)
	}
	fmt.Fprintf(os.Stderr, "otlp-sink: OTLP/HTTP on %s, writing %s\n", *httpAddr, *out)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	if err := recv.Shutdown(ctx); err != nil {
		log.Printf("otlp-sink: shutdown: %v", err)
	}
}

// componenttest is a host without extensions: the receiver needs none.
type componenttest struct{}

func (componenttest) GetExtensions() map[component.ID]component.Component { return nil }
