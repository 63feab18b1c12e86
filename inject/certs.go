package inject

import (
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
)

// certLoader serves the webhook's certificate and re-reads the PEM files when
// either changes, so a certificate rotated in its Secret (cert-manager, or a
// self-managed CA job) is picked up without restarting the injector. A stat of
// two files per TLS handshake is cheap next to the handshake itself.
type certLoader struct {
	certFile, keyFile string
	log               *zap.Logger

	mu        sync.Mutex
	cert      *tls.Certificate
	certStamp fileStamp
	keyStamp  fileStamp
}

// fileStamp identifies one version of a file. Kubernetes updates a mounted
// Secret by swapping a symlink, which os.Stat follows.
type fileStamp struct {
	mod  time.Time
	size int64
}

func stamp(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{mod: fi.ModTime(), size: fi.Size()}, nil
}

// newCertLoader loads the pair once, so a bad path stops start-up.
func newCertLoader(certFile, keyFile string, log *zap.Logger) (*certLoader, error) {
	l := &certLoader{certFile: certFile, keyFile: keyFile, log: log}
	if _, err := l.current(); err != nil {
		return nil, err
	}
	return l, nil
}

// GetCertificate implements tls.Config.GetCertificate.
func (l *certLoader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return l.current()
}

// current returns the certificate, reloading it when a file changed. While the
// files are half-written (new certificate, old key) the pair does not load;
// the previous certificate keeps serving and the next handshake retries.
func (l *certLoader) current() (*tls.Certificate, error) {
	cs, cerr := stamp(l.certFile)
	ks, kerr := stamp(l.keyFile)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := errors.Join(cerr, kerr); err != nil {
		if l.cert != nil {
			l.log.Warn("cannot stat TLS files, serving the loaded certificate", zap.Error(err))
			return l.cert, nil
		}
		return nil, fmt.Errorf("stat TLS certificate: %w", err)
	}
	if l.cert != nil && cs == l.certStamp && ks == l.keyStamp {
		return l.cert, nil
	}
	pair, err := tls.LoadX509KeyPair(l.certFile, l.keyFile)
	if err != nil {
		if l.cert != nil {
			l.log.Warn("cannot reload TLS certificate, serving the previous one", zap.Error(err))
			return l.cert, nil
		}
		return nil, fmt.Errorf("load TLS certificate %s and key %s: %w", l.certFile, l.keyFile, err)
	}
	if l.cert != nil {
		l.log.Info("TLS certificate reloaded", zap.String("cert", l.certFile))
	}
	l.cert, l.certStamp, l.keyStamp = &pair, cs, ks
	return l.cert, nil
}
