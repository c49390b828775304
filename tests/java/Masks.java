import java.awt.image.BufferedImage;
import java.awt.image.IndexColorModel;
import java.awt.image.WritableRaster;
import java.io.File;
import javax.imageio.ImageIO;

/** Trimap PNGs as a Java producer writes them with ImageIO (docs/wire-format.md, "The mask"). */
public class Masks {
    public static void main(String[] args) throws Exception {
        int w = 64, h = 48;
        byte[] ramp = new byte[256];
        for (int i = 0; i < 256; i++) ramp[i] = (byte) i;
        byte[] four = {0, 1, 2, 3};
        write(new BufferedImage(w, h, BufferedImage.TYPE_BYTE_GRAY), args[0] + "/byte_gray.png");
        write(new BufferedImage(w, h, BufferedImage.TYPE_BYTE_INDEXED,
                new IndexColorModel(8, 256, ramp, ramp, ramp)), args[0] + "/grey_ramp_256.png");
        write(new BufferedImage(w, h, BufferedImage.TYPE_BYTE_INDEXED,
                new IndexColorModel(8, 4, four, four, four)), args[0] + "/grey_4.png");
        write(new BufferedImage(w, h, BufferedImage.TYPE_BYTE_INDEXED), args[0] + "/byte_indexed.png");
        byte[] other = {10, 20, 30, 40};
        write(new BufferedImage(w, h, BufferedImage.TYPE_BYTE_INDEXED,
                new IndexColorModel(8, 4, other, other, other)), args[0] + "/grey_other.png");
        byte[] shuffled = new byte[256];
        for (int i = 0; i < 256; i++) shuffled[i] = (byte) (255 - i);
        write(new BufferedImage(w, h, BufferedImage.TYPE_BYTE_INDEXED,
                new IndexColorModel(8, 256, shuffled, shuffled, shuffled)), args[0] + "/grey_reversed.png");
        byte[] red = {0, (byte) 255, 0, 0}, green = {0, 0, (byte) 255, 0}, blue = {0, 0, 0, (byte) 255};
        write(new BufferedImage(w, h, BufferedImage.TYPE_BYTE_INDEXED,
                new IndexColorModel(8, 4, red, green, blue)), args[0] + "/colours_4.png");
    }

    /** The class values 1 (pet), 2 (background), 3 (border) as raster samples (palette indices or grey levels). */
    static void write(BufferedImage img, String path) throws Exception {
        WritableRaster raster = img.getRaster();
        for (int y = 0; y < img.getHeight(); y++) {
            for (int x = 0; x < img.getWidth(); x++) {
                boolean pet = y > 8 && y < 40 && x > 10 && x < 54;
                boolean border = y > 6 && y < 42 && x > 8 && x < 56;
                raster.setSample(x, y, 0, pet ? 1 : border ? 3 : 2);
            }
        }
        ImageIO.write(img, "png", new File(path));
    }
}
