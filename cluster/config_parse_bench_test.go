package cluster_test

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/cluster"
)

// BenchmarkParseConfig parses a file of 64 groups like the documented
// example; the baseline is encoding/json decoding the same bytes into
// generic values, without any validation.
func BenchmarkParseConfig(b *testing.B) {
	ex := string(docExample(b))
	groups := ex[strings.Index(ex, "{\n      \"name\""):strings.LastIndex(ex, "]")]
	groups = strings.TrimRight(groups, " \n")
	parts := make([]string, 64)
	for i := range parts {
		// Distinct names and ports: one machine cannot bind a port twice.
		parts[i] = strings.Replace(groups, `"name": "web"`, `"name": "web`+strconv.Itoa(i)+`"`, 1)
		parts[i] = strings.Replace(parts[i], `"127.0.0.1:8080"`, `"127.0.0.1:`+strconv.Itoa(8080+i)+`"`, 1)
	}
	data := []byte(`{"groups": [` + strings.Join(parts, ",") + `]}`)
	if fc, err := cluster.ParseConfig(data); err != nil || len(fc.Groups) != 64 {
		b.Fatalf("ParseConfig: %v", err)
	}
	unmarshal := func(b *testing.B) {
		var v any
		if err := json.Unmarshal(data, &v); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("ParseConfig", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			if _, err := cluster.ParseConfig(data); err != nil {
				b.Fatal(err)
			}
		}
		// The baseline runs as many times right after (the timer stopped
		// with the loop), so the ratio holds even on a busy machine.
		parse := b.Elapsed()
		start := time.Now()
		for range b.N {
			unmarshal(b)
		}
		b.ReportMetric(float64(parse)/float64(time.Since(start)), "x-encoding-json")
	})
	b.Run("encoding-json-baseline", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			unmarshal(b)
		}
	})
}
