// Command keygate is the API-gateway sidecar. `keygate serve` runs it; see
// `keygate help` for the other commands.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	disableMemProfile()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Environ(), os.Stdout, os.Stderr)
	stop()
	var code exitCode
	if errors.As(err, &code) {
		os.Exit(int(code))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "keygate:", err)
		os.Exit(1)
	}
}

const usage = `usage: keygate <command>

commands:
  serve     run the sidecar (configured by KEYGATE_* environment variables)
  inject    run the Kubernetes mutating admission webhook
  sign      print the headers of a signed request (see keygate sign -h)
  rekey     re-encrypt stored signing secrets under KEYGATE_SECRET_KEY
  admin     manage plans, organizations and keys through the operator API (see keygate admin -h)
  version   print the version
`

// run is keygate's main, with its inputs and outputs passed in so tests can
// drive it.
func run(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	env := envMap(environ)
	switch args[0] {
	case "serve":
		cfg, err := loadConfig(env)
		if err != nil {
			return err
		}
		return serve(ctx, cfg, stderr, nil)
	case "version":
		fmt.Fprintln(stdout, versionString())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		return runOther(ctx, args, env, stdout, stderr)
	}
}

// envMap turns KEY=VALUE pairs into a map.
func envMap(environ []string) map[string]string {
	m := make(map[string]string, len(environ))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}
