// Sends two 8x8 images to pixelwatch as bits: one bit per pixel, row by row, 8 bytes each.
package main

import (
	"cmp"
	"context"
	"github.com/twmb/franz-go/pkg/kgo"
	"os"
)

func main() {
	topic := cmp.Or(os.Getenv("PIXELWATCH_INPUT_TOPIC"), "pixelwatch.images")
	client, err := kgo.NewClient(kgo.SeedBrokers(cmp.Or(os.Getenv("PIXELWATCH_BOOTSTRAP"), "localhost:9092")))
	if err != nil {
		panic(err)
	}
	defer client.Close()
	images := map[string][]byte{ // the row XXX..XXX is 0b11100111, 0xE7
		"square":  {0x00, 0x7E, 0x42, 0x42, 0x42, 0x42, 0x7E, 0x00},
		"corners": {0xE7, 0xE7, 0xC3, 0x00, 0x00, 0xC3, 0xE7, 0xE7},
	}
	for name, bits := range images {
		headers := []kgo.RecordHeader{{Key: "pixelwatch.format", Value: []byte("bits")},
			{Key: "pixelwatch.id", Value: []byte("example/" + name)}}
		record := &kgo.Record{Topic: topic, Key: []byte(name), Value: bits, Headers: headers}
		if err := client.ProduceSync(context.Background(), record).FirstErr(); err != nil {
			panic(err)
		}
	}
}
