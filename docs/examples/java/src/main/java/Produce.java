// Sends two 8x8 images to pixelwatch as JSON, the pixels as X/. art (X = 1, . = 0).
import java.util.Map;
import java.util.Objects;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.StringSerializer;

public class Produce {
    static final Map<String, String> IMAGES = Map.of(
        "square", "........ .XXXXXX. .X....X. .X....X. .X....X. .X....X. .XXXXXX. ........",
        "corners", "XXX..XXX XXX..XXX XX....XX ........ ........ XX....XX XXX..XXX XXX..XXX");
    static String env(String name, String fallback) {
        return Objects.requireNonNullElse(System.getenv(name), fallback);
    }

    public static void main(String[] args) throws Exception {
        String topic = env("PIXELWATCH_INPUT_TOPIC", "pixelwatch.images");
        Map<String, Object> config = Map.of(
            "bootstrap.servers", env("PIXELWATCH_BOOTSTRAP", "localhost:9092"), "acks", "all");
        var serializer = new StringSerializer();
        try (var producer = new KafkaProducer<>(config, serializer, serializer)) {
            for (var image : IMAGES.entrySet()) {
                String id = "example/" + image.getKey();
                String value = "{\"id\": \"" + id + "\", \"pixels\": \"" + image.getValue() + "\"}";
                // get() waits for the broker's acknowledgement and throws if the send failed
                producer.send(new ProducerRecord<>(topic, image.getKey(), value)).get();
            }
        }
    }
}
