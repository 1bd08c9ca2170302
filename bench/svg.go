package main

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"math"
	"slices"
	"strings"
)

// Plot geometry, in SVG user units.
const (
	plotW, plotH                       = 720, 440
	marginL, marginR, marginT, marginB = 80, 190, 40, 50
	innerW                             = plotW - marginL - marginR
	innerH                             = plotH - marginT - marginB
	legendLine, legendGap              = 24, 18
	legendStartX                       = plotW - marginR + 16
	// plotPreferredP is the payload size plotted when it was measured.
	plotPreferredP = 64
	plotTitle      = "descriptors per second against descriptors per message"
	plotNoData     = "no scmrights measurements in this run"
)

// series is one polyline: a socket type and variant over K.
type series struct {
	socket, variant string
	k               []int
	fdsPerSec       []float64
}

func xmlText(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// plotSeries collects fds/s medians of the scm cases at one payload size:
// 64 bytes if measured, else the smallest measured.
func plotSeries(res *Results) (p int, out []*series) {
	var ps []int
	for _, c := range res.Cases {
		if c.Group == "scm" && !slices.Contains(ps, c.P) {
			ps = append(ps, c.P)
		}
	}
	if len(ps) == 0 {
		return 0, nil
	}
	slices.Sort(ps)
	p = ps[0]
	if slices.Contains(ps, plotPreferredP) {
		p = plotPreferredP
	}
	byKey := map[string]*series{}
	for _, c := range res.Cases {
		if c.Group != "scm" || c.P != p {
			continue
		}
		for _, v := range c.Variants {
			s, ok := v.Metrics["fds/s"]
			if !ok || s.N == 0 || !finite(s.Median) || s.Median <= 0 {
				continue
			}
			key := c.Socket + "/" + v.Name
			sr := byKey[key]
			if sr == nil {
				sr = &series{socket: c.Socket, variant: v.Name}
				byKey[key] = sr
				out = append(out, sr)
			}
			sr.k = append(sr.k, c.K)
			sr.fdsPerSec = append(sr.fdsPerSec, s.Median)
		}
	}
	for _, sr := range out {
		idx := make([]int, len(sr.k))
		for i := range idx {
			idx[i] = i
		}
		slices.SortFunc(idx, func(a, b int) int { return sr.k[a] - sr.k[b] })
		k, f := make([]int, len(idx)), make([]float64, len(idx))
		for i, j := range idx {
			k[i], f[i] = sr.k[j], sr.fdsPerSec[j]
		}
		sr.k, sr.fdsPerSec = k, f
	}
	return p, out
}

func variantColor(v string) string {
	switch v {
	case "c":
		return "#222222"
	case "naive":
		return "#d62728"
	case "scm":
		return "#1f77b4"
	case "batched":
		return "#2ca02c"
	}
	return "#9467bd"
}

// PlotSVG draws fds/s against fds per message (log-scale x), one polyline
// per socket type and variant, with axes, ticks and a legend. It needs no
// library: the SVG is written by hand.
func PlotSVG(res *Results) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w(`<?xml version="1.0" encoding="UTF-8"?>` + "\n")
	w(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", plotW, plotH, plotW, plotH)
	w(`<rect x="0" y="0" width="%d" height="%d" fill="white"/>`+"\n", plotW, plotH)
	p, ss := plotSeries(res)
	title := plotTitle
	if p > 0 {
		title += fmt.Sprintf(" (P = %d bytes)", p)
	}
	w(`<text x="%d" y="22" font-size="14">%s</text>`+"\n", marginL, xmlText(title))
	if len(ss) == 0 {
		w(`<text x="%d" y="%d">%s</text>`+"\n", marginL, marginT+innerH/2, xmlText(plotNoData))
		w("</svg>\n")
		return b.String()
	}
	kMin, kMax, yMax := math.Inf(1), math.Inf(-1), 0.0
	for _, s := range ss {
		for i, k := range s.k {
			kMin, kMax = math.Min(kMin, float64(k)), math.Max(kMax, float64(k))
			yMax = math.Max(yMax, s.fdsPerSec[i])
		}
	}
	if kMax <= kMin {
		kMin, kMax = kMin/2, kMax*2
	}
	yMax = niceCeil(yMax * 1.05)
	lx0, lx1 := math.Log10(kMin), math.Log10(kMax)
	x := func(k float64) float64 { return marginL + (math.Log10(k)-lx0)/(lx1-lx0)*innerW }
	y := func(v float64) float64 { return marginT + innerH - v/yMax*innerH }

	// Axes, grid and ticks.
	w(`<g stroke="#cccccc" stroke-width="1">` + "\n")
	for i := 0; i <= 5; i++ {
		v := yMax * float64(i) / 5
		w(`<line x1="%d" y1="%.1f" x2="%d" y2="%.1f"/>`+"\n", marginL, y(v), marginL+innerW, y(v))
	}
	w("</g>\n")
	w(`<g stroke="black" stroke-width="1"><line x1="%d" y1="%d" x2="%d" y2="%d"/><line x1="%d" y1="%d" x2="%d" y2="%d"/></g>`+"\n",
		marginL, marginT, marginL, marginT+innerH, marginL, marginT+innerH, marginL+innerW, marginT+innerH)
	for i := 0; i <= 5; i++ {
		v := yMax * float64(i) / 5
		w(`<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", marginL-6, y(v)+4, xmlText(fmtNum(v)))
	}
	var ticks []int
	for _, s := range ss {
		for _, k := range s.k {
			if !slices.Contains(ticks, k) {
				ticks = append(ticks, k)
			}
		}
	}
	slices.Sort(ticks)
	for _, k := range ticks {
		xx := x(float64(k))
		w(`<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="black"/>`+"\n", xx, marginT+innerH, xx, marginT+innerH+5)
		w(`<text x="%.1f" y="%d" text-anchor="middle">%d</text>`+"\n", xx, marginT+innerH+18, k)
	}
	w(`<text x="%d" y="%d" text-anchor="middle">descriptors per message (K, log scale)</text>`+"\n", marginL+innerW/2, plotH-10)
	w(`<text x="16" y="%d" text-anchor="middle" transform="rotate(-90 16 %d)">descriptors per second</text>`+"\n", marginT+innerH/2, marginT+innerH/2)

	// Series and legend.
	for i, s := range ss {
		color := variantColor(s.variant)
		dash := ""
		if s.socket == "seqpacket" {
			dash = ` stroke-dasharray="6 4"`
		}
		pts := make([]string, len(s.k))
		for j, k := range s.k {
			pts[j] = fmt.Sprintf("%.1f,%.1f", x(float64(k)), y(s.fdsPerSec[j]))
		}
		w(`<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>`+"\n", color, dash, strings.Join(pts, " "))
		for j, k := range s.k {
			w(`<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", x(float64(k)), y(s.fdsPerSec[j]), color)
		}
		ly := marginT + 10 + i*legendGap
		w(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"%s/>`+"\n", legendStartX, ly, legendStartX+legendLine, ly, color, dash)
		w(`<text x="%d" y="%d">%s</text>`+"\n", legendStartX+legendLine+6, ly+4, xmlText(s.socket+" "+s.variant))
	}
	w("</svg>\n")
	return b.String()
}

// niceCeil rounds x up to 1, 2 or 5 times a power of ten.
func niceCeil(x float64) float64 {
	if x <= 0 || !finite(x) {
		return 1
	}
	e := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*e >= x {
			return m * e
		}
	}
	return 10 * e
}
