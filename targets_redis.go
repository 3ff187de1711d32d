package wstotcp

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisSource looks tokens up in Redis (websockify's TokenRedis): the key
// is prefix+token, the value a target (`host:port`, JSON...).
type redisSource struct {
	client *redis.Client
	prefix string
	shown  string // the URL for logs, password redacted
}

// redisNoPrefixWarning is logged when the Redis source has no key prefix.
const redisNoPrefixWarning = "targets > redis: no key prefix: a client's token is the whole key, so clients can " +
	"probe any key of the database whose value reads as a target; keep the targets under a prefix of their own " +
	"(redis <url> <prefix>, JSON targets.redis.prefix)"

func newRedisSource(rawURL, prefix string, timeout time.Duration) (*redisSource, error) {
	rawURL = strings.TrimSpace(rawURL)
	shown := "redis URL"
	if u, err := url.Parse(rawURL); err == nil {
		shown = u.Redacted()
	}
	opt, err := redis.ParseURL(rawURL)
	if err != nil {
		// go-redis's errors may quote the URL: do not pass them on
		return nil, fmt.Errorf("%s: not a redis://, rediss:// or unix:// URL", shown)
	}
	opt.DialTimeout = timeout
	opt.ReadTimeout = timeout
	opt.WriteTimeout = timeout
	opt.ContextTimeoutEnabled = true // a lookup's context bounds it
	opt.MaxRetries = 1
	opt.DisableIdentity = true // no CLIENT SETINFO on connect
	// NewClient connects lazily: nothing is dialled at provision.
	return &redisSource{client: redis.NewClient(opt), prefix: prefix, shown: shown}, nil
}

func (s *redisSource) name() string { return "redis" }

func (s *redisSource) close() { s.client.Close() }

// get reads the key. Errors name the server, never the key (it holds
// the token).
func (s *redisSource) get(ctx context.Context, tok string) (target, error) {
	val, err := s.client.Get(ctx, s.prefix+tok).Result()
	if errors.Is(err, redis.Nil) {
		return target{}, errUnknownToken
	}
	if err != nil {
		return target{}, fmt.Errorf("GET from %s: %w", s.shown, err)
	}
	t, err := parseTargetValue(val)
	if err != nil {
		return target{}, fmt.Errorf("%s: the value is not a target: %v", s.shown, err)
	}
	return t, nil
}
