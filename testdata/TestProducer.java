// A Kafka producer driven line by line on stdin, for the integration tests
// (tests/integration/kafka_read.rs). They need records that only other
// producers write: Kafka's own Java client with a codec, in a transaction it
// commits or aborts, or too large for KafkaSend to read.
//
// Usage: java -cp "KAFKA_LIBS/*:DIR" TestProducer BOOTSTRAP TOPIC PARTITION [NAME=VALUE...]
// NAME=VALUE are producer settings (compression.type=zstd, transactional.id=t1, ...).
// One command per line; each is answered on stdout with "ok" once done, or
// "error: WHAT":
//   send KEY VALUE_HEX [HEADER_NAME HEADER_VALUE_HEX]...  one record, acknowledged
//                                                          ("-" as KEY: no key)
//   zeros KEY N                                           a record of N zero bytes
//   queue KEY VALUE_HEX [HEADER_NAME HEADER_VALUE_HEX]...  like send, not yet acknowledged
//   queue-zeros KEY N                                     like zeros, not yet acknowledged
//   flush                                                 sends what is queued and waits
//     (queued records share one batch when linger.ms and batch.size allow)
//   begin | commit | abort                                the transaction calls
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.Future;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.internals.RecordHeader;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class TestProducer {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.put("bootstrap.servers", args[0]);
        props.put("key.serializer", ByteArraySerializer.class.getName());
        props.put("value.serializer", ByteArraySerializer.class.getName());
        for (int i = 3; i < args.length; i++) {
            String[] kv = args[i].split("=", 2);
            props.put(kv[0], kv[1]);
        }
        String topic = args[1];
        int partition = Integer.parseInt(args[2]);
        HexFormat hex = HexFormat.of();
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(props)) {
            if (props.containsKey("transactional.id")) {
                producer.initTransactions();
            }
            System.out.println("ready");
            System.out.flush();
            BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
            List<Future<RecordMetadata>> queued = new ArrayList<>();
            String line;
            while ((line = in.readLine()) != null) {
                String[] w = line.trim().split(" ");
                try {
                    switch (w[0]) {
                        case "send": {
                            byte[] key = w[1].equals("-") ? null : w[1].getBytes(StandardCharsets.UTF_8);
                            List<Header> headers = new ArrayList<>();
                            for (int i = 3; i + 1 < w.length; i += 2) {
                                headers.add(new RecordHeader(w[i], hex.parseHex(w[i + 1])));
                            }
                            producer.send(new ProducerRecord<>(topic, partition, key, hex.parseHex(w[2]), headers)).get();
                            break;
                        }
                        case "zeros": {
                            byte[] key = w[1].getBytes(StandardCharsets.UTF_8);
                            producer.send(new ProducerRecord<>(topic, partition, key, new byte[Integer.parseInt(w[2])])).get();
                            break;
                        }
                        case "queue": {
                            byte[] key = w[1].getBytes(StandardCharsets.UTF_8);
                            List<Header> headers = new ArrayList<>();
                            for (int i = 3; i + 1 < w.length; i += 2) {
                                headers.add(new RecordHeader(w[i], hex.parseHex(w[i + 1])));
                            }
                            queued.add(producer.send(new ProducerRecord<>(topic, partition, key, hex.parseHex(w[2]), headers)));
                            break;
                        }
                        case "queue-zeros": {
                            byte[] key = w[1].getBytes(StandardCharsets.UTF_8);
                            queued.add(producer.send(new ProducerRecord<>(topic, partition, key, new byte[Integer.parseInt(w[2])])));
                            break;
                        }
                        case "flush":
                            producer.flush();
                            for (Future<RecordMetadata> f : queued) {
                                f.get();
                            }
                            queued.clear();
                            break;
                        case "begin":
                            producer.beginTransaction();
                            break;
                        case "commit":
                            producer.commitTransaction();
                            break;
                        case "abort":
                            producer.abortTransaction();
                            break;
                        default:
                            throw new IllegalArgumentException("unknown command " + w[0]);
                    }
                    System.out.println("ok");
                } catch (Exception e) {
                    System.out.println("error: " + e);
                }
                System.out.flush();
            }
        }
    }
}
